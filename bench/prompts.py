"""The questions every benchmark asks, so their numbers compare."""

from __future__ import annotations

PROMPTS = [
    "How long is the warranty on a backpack?",
    "Can I return a tent after thirty days?",
    "What does Article 5 say about the guarantee?",
    "Which payment methods do you accept?",
    "How do I change my delivery address?",
    "Is a shop allowed to refuse a refund?",
    "When will my order arrive?",
    "What is the limitation period for claims?",
]
