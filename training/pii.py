"""Personal data scrubbing, applied to every text before it can reach a training set.

Adapters memorise: an e-mail address in a training answer can come back in
someone else's chat. Each kind of identifier is replaced by a placeholder
(``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[ID]``) and counted, so the dataset
card says what was removed. English and Chinese formats are covered. Digit
runs are matched with digit look-arounds instead of ``\\b``, because Chinese
characters count as word characters and ``\\b`` never fires between them and
a digit.

Card and Chinese ID numbers are checked (Luhn, ISO 7064 check digit), so
order numbers and other long digit runs are left alone; phone numbers have no
checksum and are matched by shape.
"""

from __future__ import annotations

import re
from collections import Counter

PLACEHOLDERS = {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]", "national_id": "[ID]"}

EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
# Chinese resident ID: 6-digit region, birth date, 3-digit sequence, check digit (0-9 or X).
CN_RESIDENT_ID = re.compile(r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![0-9A-Za-z])")
US_SSN = re.compile(r"(?<!\d)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d)")
UK_NINO = re.compile(r"(?<![A-Za-z0-9])[A-CEGHJ-PR-TW-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9])")
CARD = re.compile(r"(?<!\d)(?:\d[ \-]?){12,18}\d(?!\d)")
# Numbers with a country code go first, before card numbers: "+86 138 1234 5678" is also a Luhn-valid digit run.
INTERNATIONAL_PHONES = (
    # Chinese mobile with +86 / 0086.
    re.compile(r"(?<![\d+])(?:\+|00)86[ \-]?1[3-9]\d[ \-]?\d{4}[ \-]?\d{4}(?!\d)"),
    # Any other: +44 20 7946 0958, +1 (415) 555-0100.
    re.compile(r"(?<![\d+])\+\d{1,3}[ \-.]?(?:\(\d{1,4}\)[ \-.]?)?\d{1,4}(?:[ \-.]?\d{2,4}){1,4}(?!\d)"),
)
# Local numbers go after card numbers, whose digit groups they would otherwise eat.
LOCAL_PHONES = (
    # Chinese mobile: 13812345678, 138 1234 5678.
    re.compile(r"(?<!\d)1[3-9]\d[ \-]?\d{4}[ \-]?\d{4}(?!\d)"),
    # Chinese landline with area code: 010-12345678, (0755) 1234 5678.
    re.compile(r"(?<!\d)(?:\(0\d{2,3}\)|0\d{2,3})[ \-]?\d{3,4}[ \-]?\d{4}(?!\d)"),
    # North American: (415) 555-0100, 415-555-0100, 415.555.0100.
    re.compile(r"(?<!\d)(?:\(\d{3}\)\s?|\d{3}[\-.])\d{3}[\-.]\d{4}(?!\d)"),
)

_CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_ID_CHECK = "10X98765432"


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def cn_id_valid(number: str) -> bool:
    total = sum(int(d) * w for d, w in zip(number[:17], _CN_ID_WEIGHTS))
    return _CN_ID_CHECK[total % 11] == number[17].upper()


class Scrubber:
    """Replaces personal identifiers in texts and keeps a running count per kind."""

    def __init__(self) -> None:
        self.counts = Counter()

    def __call__(self, text: str) -> str:
        text = EMAIL.sub(self._replace("email"), text)
        text = CN_RESIDENT_ID.sub(self._checked("national_id", cn_id_valid), text)
        text = US_SSN.sub(self._replace("national_id"), text)
        text = UK_NINO.sub(self._replace("national_id"), text)
        for pattern in INTERNATIONAL_PHONES:
            text = pattern.sub(self._replace("phone"), text)
        text = CARD.sub(self._checked("card", lambda m: 13 <= len(m) <= 19 and luhn_valid(m)), text)
        for pattern in LOCAL_PHONES:
            text = pattern.sub(self._replace("phone"), text)
        return text

    def _replace(self, kind: str):
        def replace(match: re.Match) -> str:
            self.counts[kind] += 1
            return PLACEHOLDERS[kind]

        return replace

    def _checked(self, kind: str, valid):
        def replace(match: re.Match) -> str:
            digits = re.sub(r"[ \-]", "", match.group(0))
            if not valid(digits):
                return match.group(0)
            self.counts[kind] += 1
            return PLACEHOLDERS[kind]

        return replace

    def chat(self, messages: list[dict]) -> list[dict]:
        return [{**m, "content": self(m["content"])} for m in messages]
