"""Settings of the answer checks (the ``[grounding]`` section of switchboard.toml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GroundingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    check_citations: bool = Field(
        True,
        description="Remove [n] markers that name no given source; re-point a citation whose source does not hold "
        "the article its sentence names; cite the best-supporting source when an answer cites none.",
    )
    check_facts: bool = Field(
        True,
        description="Numbers, amounts, durations, dates, phone numbers, e-mail addresses, URLs and article numbers "
        "must appear in a cited source (or the question); an answer that fails is replaced by a quote of the "
        "best-matching passage, or the adapter's no-answer text.",
    )
    keep_script: bool = Field(
        True, description="Answer a question in Traditional Chinese in Traditional characters, Simplified in Simplified."
    )
    min_support: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="An answer that cites nothing is given the citation of the source holding at least this share "
        "of its words; below it the answer counts as unsupported.",
    )
    min_quote_overlap: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="A fallback quote must hold at least this share of the question's words; below it the "
        "adapter's no-answer text is shown instead.",
    )
