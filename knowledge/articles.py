"""Statute articles: finding "Article 12" / 「第十二條」 headings in documents and references in queries.

A statute answers questions article by article, and people ask for articles
by number in either language ("what does Article 12 say", 「第十二條規定什麼」).
Both sides normalize to the same key (``"12"``, ``"12a"``, ``"12-1"`` for
「第十二條之一」) so a query can name an article in words or digits, Chinese
or Roman numerals, and still meet its chunk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ZH_DIGITS = {
    "零": 0,
    "〇": 0,
    "一": 1,
    "二": 2,
    "两": 2,
    "兩": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_ZH_UNITS = {"十": 10, "百": 100, "千": 1000}
_ZH_NUMBER = "[0-9零〇一二两兩三四五六七八九十百千]+"
_ROMAN = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}

# Headings start a line; Markdown hashes and bold markers in front of them are tolerated.
_LINE_PREFIX = r"^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*)?[ \t]*"
_EN_ARTICLE = r"(?:\b(?i:article|art\.)[ \t]*|§[ \t]*)(?P<en>\d+[a-z]?|[IVXLCDM]+)\b"
_ZH_ARTICLE = rf"第[ \t]*(?P<zh>{_ZH_NUMBER})[ \t]*[條条](?:之(?P<zhsub>{_ZH_NUMBER}))?"

# An English heading ends its line or is followed by punctuation or a capitalized title ("Article 12. A
# person...", "Article 12 Majority"); "Article 12 applies to..." at a line start is a cross-reference.
_EN_HEADING_END = r"(?=[ \t]*(?:$|[.:：)\]*—–-]|[ \t]+[A-Z(\[\"“]))"
ARTICLE_HEADING = re.compile(_LINE_PREFIX + rf"(?P<label>{_EN_ARTICLE}{_EN_HEADING_END}|{_ZH_ARTICLE})", re.MULTILINE)
CHAPTER_HEADING = re.compile(
    _LINE_PREFIX
    + rf"(?P<label>(?:(?i:chapter|part)[ \t]+(?:\d+|[IVXLCDM]+)\b|第[ \t]*{_ZH_NUMBER}[ \t]*[章編编篇])[^\n]*)$",
    re.MULTILINE,
)
_ARTICLE_REFERENCE = re.compile(rf"{_EN_ARTICLE}|{_ZH_ARTICLE}")


@dataclass(frozen=True)
class ArticleHeading:
    start: int  # offset of the heading's line, Markdown prefix included
    label: str  # the heading as written: "Article 12", "第十二條"
    key: str  # normalized number shared with query references: "12"


def chinese_number(text: str) -> int:
    """「十二」 → 12, 「一百零三」 → 103, 「二十」 → 20; Arabic digits pass through."""
    if text.isdigit():
        return int(text)
    total, current = 0, 0
    for char in text:
        if char in _ZH_DIGITS:
            current = _ZH_DIGITS[char]
        elif char in _ZH_UNITS:
            total += (current or 1) * _ZH_UNITS[char]
            current = 0
    return total + current


def roman_number(text: str) -> int:
    values = [_ROMAN[c] for c in text]
    return sum(-v if i + 1 < len(values) and v < values[i + 1] else v for i, v in enumerate(values))


def _key(match: re.Match) -> str:
    if match.group("en"):
        token = match.group("en")
        if token.isupper() and token.isalpha():
            return str(roman_number(token))
        return token.lower()
    key = str(chinese_number(match.group("zh")))
    if match.group("zhsub"):
        key += f"-{chinese_number(match.group('zhsub'))}"
    return key


def find_article_headings(text: str) -> list[ArticleHeading]:
    """Article headings at line starts, in order; a document with fewer than two is not a statute."""
    return [ArticleHeading(m.start(), m.group("label").strip(), _key(m)) for m in ARTICLE_HEADING.finditer(text)]


def referenced_articles(query: str) -> list[str]:
    """Keys of the articles a query names anywhere in its text ("see Art. 5 and 第十二條" → ["5", "12"])."""
    keys: list[str] = []
    for match in _ARTICLE_REFERENCE.finditer(query):
        key = _key(match)
        if key not in keys:
            keys.append(key)
    return keys
