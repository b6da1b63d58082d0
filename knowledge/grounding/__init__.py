"""Answers checked against their sources: citations, facts, the user's script, and a grounded fallback."""

from knowledge.grounding.check import Audit, GroundingReport, audit_answer, ground_answer
from knowledge.grounding.config import GroundingConfig

__all__ = ["Audit", "GroundingConfig", "GroundingReport", "audit_answer", "ground_answer"]
