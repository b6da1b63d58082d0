"""Keep the user's Chinese script: a question in Traditional characters gets an answer in Traditional ones.

The 135M default (and many larger models) answers in Simplified Chinese
whatever it is asked in; readers of Traditional Chinese (Taiwan, Hong Kong)
read that as a foreign answer. OpenCC converts between the scripts; a text's
script is the one whose characters it uses more of (most characters are the
same in both, so only those that differ count).
"""

from __future__ import annotations

import functools
from typing import Literal

Script = Literal["traditional", "simplified"]


@functools.cache
def _converter(config: str):
    import opencc

    return opencc.OpenCC(config)


def chinese_script(text: str) -> Script | None:
    """The Chinese script ``text`` is written in; None when it has no characters that tell them apart."""
    if not any("\u4e00" <= char <= "\u9fff" for char in text):
        return None
    as_simplified = _converter("t2s").convert(text)
    as_traditional = _converter("s2t").convert(text)
    traditional = sum(a != b for a, b in zip(text, as_simplified))
    simplified = sum(a != b for a, b in zip(text, as_traditional))
    if traditional == simplified:
        return None
    return "traditional" if traditional > simplified else "simplified"


def in_script(text: str, script: Script | None) -> str:
    """``text`` in ``script``; converting text already in that script changes nothing."""
    if script is None or not any("\u4e00" <= char <= "\u9fff" for char in text):
        return text
    return _converter("s2t" if script == "traditional" else "t2s").convert(text)
