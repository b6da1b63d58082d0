"""Answers checked against their sources: citations, facts, the user's script, and a grounded fallback."""

from knowledge.grounding.check import Audit, GroundingReport, audit_answer, ground_answer

__all__ = ["Audit", "GroundingReport", "audit_answer", "ground_answer"]
