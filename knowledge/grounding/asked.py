"""What kind of fact a question asks for: a phone number, an e-mail address, a link, a duration, an amount, an article.

"Who do I phone about a broken pole?" answered without a phone number may be
polite and true and still no answer: the customer leaves without what they
came for. Knowing the kind asked for lets the check call such an answer
unanswered, and lets the fallback quote the sentence that holds one.
"""

from __future__ import annotations

import re

_ASKS = {
    "phone": r"\b(phone|call|ring|telephone|hotline)\b|电话|電話|致电|致電",
    "email": r"e-?mail|邮箱|郵箱|电邮|電郵",
    "url": r"\b(website|web site|link|url|web address)\b|网址|網址|链接|連結",
    "article": r"\b(which|what) (article|provision|section)\b|哪一?[条條]|第几[条條]|第幾[条條]",
    "duration": r"\bhow (long|soon|quickly)\b|\bhow many (days|weeks|months|years|hours|minutes)\b|\bwithin how\b"
    r"|多久|多长时间|多長時間|几天|幾天|多少天|几年|幾年|几个月|幾個月",
    "number": r"\bhow (much|many)\b|\bwhat (does it|do they|will it|would it) cost\b|\b(cost|price|fee|temperature)s?\b"
    r"|\bwhat time\b|\buntil when\b|多少|几点|幾點|几度|幾度",
}
_PATTERNS = {kind: re.compile(pattern, re.IGNORECASE) for kind, pattern in _ASKS.items()}
# The fact kinds that answer each kind of question: "how long" is also answered by a bare number ("within 30").
ANSWERED_BY = {"duration": frozenset({"duration", "number"})}


def asked_kinds(question: str) -> frozenset[str]:
    """The kinds of fact ``question`` asks for; empty when it asks for none in particular."""
    return frozenset(kind for kind, pattern in _PATTERNS.items() if pattern.search(question))


def answering_kinds(kinds: frozenset[str]) -> frozenset[str]:
    """The fact kinds an answer to a question asking for ``kinds`` may give."""
    return frozenset().union(*(ANSWERED_BY.get(kind, frozenset({kind})) for kind in kinds))
