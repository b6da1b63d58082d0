"""Checkable facts in a text: numbers, amounts, durations, dates, phone numbers, e-mail addresses, URLs, articles.

A small model that is given the right passage still writes "1-800-556-9347"
where the page says 555-0147, or "18 months" where it says 3 years. Those are
the facts a customer acts on, and they are the ones a plain comparison can
check: each is reduced to a normal form that is the same however it is
written ("3 years" / "three years" / "3-year" / 「三年」 → ``("3", "year")``;
"+1 206 555 0147" / "555-0147" → digits), so a fact of the answer is grounded
when a source holds the same normal form.

Numbers spelled as words count only with a unit after them ("three years"):
"one of our agents" states no fact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from knowledge.articles import chinese_number, referenced_articles

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"'()\[\]“”‘’「」『』*]+", re.IGNORECASE)
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b")
_PHONE = re.compile(r"(?<![\w.,])\+?\(?\d[\d ().\-/]{5,}\d(?![\w]|[.,]\d)")
_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?!\w)|(?<![\w.])(\d+)(?=[A-Za-z\u4e00-\u9fff%])")
_LIST_MARKER = re.compile(r"^\s*\d{1,2}[.)]\s", re.MULTILINE)
_CITATION = re.compile(r"\[\s*\d+(?:\s*[,;]\s*\d+)*\s*\]")

_UNITS = {
    "year": "year", "years": "year", "yr": "year", "yrs": "year",
    "month": "month", "months": "month",
    "week": "week", "weeks": "week",
    "day": "day", "days": "day",
    "hour": "hour", "hours": "hour", "hr": "hour", "hrs": "hour", "h": "hour",
    "minute": "minute", "minutes": "minute", "min": "minute", "mins": "minute",
    "business day": "day", "business days": "day", "working day": "day", "working days": "day",
}
_ZH_UNITS = {
    "年": "year", "个月": "month", "個月": "month", "周": "week", "週": "week", "星期": "week",
    "天": "day", "日": "day", "个工作日": "day", "個工作日": "day", "工作日": "day",
    "小时": "hour", "小時": "hour", "分钟": "minute", "分鐘": "minute",
}
_WORD_NUMBERS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "a": 1, "an": 1,
}
_UNIT_WORDS = "|".join(sorted((re.escape(u) for u in _UNITS), key=len, reverse=True))
_DIGIT_DURATION = re.compile(rf"(?<![\w.])(\d+(?:\.\d+)?)\s*-?\s*({_UNIT_WORDS})\b", re.IGNORECASE)
_TENS = "twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety"
_ONES = "one|two|three|four|five|six|seven|eight|nine"
_WORD_DURATION = re.compile(
    rf"\b((?:{_TENS})(?:[\s-](?:{_ONES}))?|{_ONES}|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen"
    rf"|eighteen|nineteen|a hundred|one hundred|an?)[\s-]+({_UNIT_WORDS})\b",
    re.IGNORECASE,
)
_ZH_NUMERAL = "[0-9零〇一二两兩三四五六七八九十百千]+"
_ZH_UNIT_WORDS = "|".join(sorted(map(re.escape, _ZH_UNITS), key=len, reverse=True))
_ZH_DURATION_UNIT = re.compile(rf"({_ZH_NUMERAL})\s*({_ZH_UNIT_WORDS})")


@dataclass(frozen=True)
class Fact:
    """One checkable statement, as written and in normal form."""

    kind: str = field(metadata={"help": "number, duration, date, phone, email, url or article."})
    text: str = field(metadata={"help": "As written in the text."})
    key: str = field(metadata={"help": "Normal form compared with the sources' facts."})

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Facts:
    """Every fact of one text, in normal form, for membership tests."""

    items: tuple[Fact, ...]
    phone_digits: tuple[str, ...] = ()

    def holds(self, fact: Fact) -> bool:
        """Whether this text states ``fact``: the same normal form, or a phone number it contains."""
        if fact.kind == "phone":
            return any(fact.key in digits for digits in self.phone_digits)
        return any(own.kind == fact.kind and own.key == fact.key for own in self.items)


def _number_key(value: float) -> str:
    return f"{value:g}"


def _word_number(words: str) -> int:
    total = 0
    for part in re.split(r"[\s-]+", words.lower()):
        total += _WORD_NUMBERS.get(part, 0)
    return total


def _mask(text: str, span: tuple[int, int]) -> str:
    start, end = span
    return text[:start] + " " * (end - start) + text[end:]


def extract_facts(text: str) -> Facts:
    """The facts of ``text``; citation markers ([1]) and list numbering (1. / 2)) are not facts."""
    facts: list[Fact] = []
    phones: list[str] = []
    work = _CITATION.sub(lambda m: " " * len(m.group()), text)
    work = _LIST_MARKER.sub(lambda m: " " * len(m.group()), work)

    def take(pattern: re.Pattern, kind: str, key) -> None:
        nonlocal work
        for match in list(pattern.finditer(work)):
            value = key(match)
            if value is not None:
                facts.append(Fact(kind, match.group().strip(), value))
                work = _mask(work, match.span())

    take(_EMAIL, "email", lambda m: m.group().lower().rstrip("."))
    take(_URL, "url", lambda m: re.sub(r"^(?:https?://)?(?:www\.)?", "", m.group().lower()).rstrip("./,;:!?"))
    take(_ISO_DATE, "date", lambda m: f"{int(m.group(1))}-{int(m.group(2))}-{int(m.group(3))}")

    def phone(match: re.Match) -> str | None:
        digits = re.sub(r"\D", "", match.group())
        if len(digits) < 7 or re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", match.group().strip()):
            return None
        phones.append(digits)
        return digits

    take(_PHONE, "phone", phone)
    for key in referenced_articles(work):
        facts.append(Fact("article", f"Article {key}", key))
    work = re.sub(r"(?i:\barticle|\bart\.|§)\s*\w+|第\s*" + _ZH_NUMERAL + r"\s*[條条]", lambda m: " " * len(m.group()), work)

    def duration(number: float, unit: str) -> str:
        return f"{_number_key(number)} {unit}"

    take(_DIGIT_DURATION, "duration", lambda m: duration(float(m.group(1)), _UNITS[m.group(2).lower()]))
    take(_WORD_DURATION, "duration", lambda m: duration(_word_number(m.group(1)), _UNITS[m.group(2).lower()]))
    take(_ZH_DURATION_UNIT, "duration", lambda m: duration(chinese_number(m.group(1)), _ZH_UNITS[m.group(2)]))

    def number(match: re.Match) -> str:
        whole = (match.group(1) or match.group(3)).replace(",", "")
        fraction = match.group(2)
        return _number_key(float(f"{whole}.{fraction}" if fraction else whole))

    take(_NUMBER, "number", number)
    return Facts(tuple(facts), tuple(phones))


def source_facts(text: str) -> Facts:
    """:func:`extract_facts` of a source, where a duration also counts as its bare number.

    An answer may say "within 30 of them" or "a 30-day window" of a source's
    "30 days"; the number alone is then grounded, and a duration still needs
    its unit.
    """
    facts = extract_facts(text)
    extra = [Fact("number", f.text, f.key.split(" ")[0]) for f in facts.items if f.kind == "duration"]
    return Facts(facts.items + tuple(extra), facts.phone_digits)
