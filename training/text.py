"""Text units shared by near-duplicate detection and ROUGE scoring.

Words for Latin scripts, single characters for Chinese (which has no spaces):
whitespace tokenizers, ROUGE's default among them, drop or lump Chinese text.
"""

from __future__ import annotations

import re
import unicodedata

_TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W_]+", re.UNICODE)


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


class MixedTokenizer:
    """The ``tokenize`` interface rouge_score expects."""

    def tokenize(self, text: str) -> list[str]:
        return tokens(text)
