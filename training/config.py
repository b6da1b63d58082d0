"""Settings of the training module (the ``[training]`` section of switchboard.toml).

These are the operator's defaults; one run's full description is a
:class:`training.recipe.Recipe` built from them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TrainingDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    max_steps: int = Field(60, ge=1, description="Optimizer steps of a training run unless a run says otherwise.")
    rank: int = Field(4, ge=1, le=1024, description="LoRA rank of new adapters (see training.recipe.Recipe.rank).")
    alpha: int = Field(16, ge=1, description="LoRA alpha of new adapters (see training.recipe.Recipe.alpha).")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    batch_size: int = Field(4, ge=1, description="Examples per step.")
    max_length: int = Field(512, ge=16, description="Tokens per training example at most.")
    seed: int = Field(42, description="Seed of splits, replay sampling and training.")
    holdout_fraction: float = Field(
        0.15, ge=0.0, lt=0.9, description="Share of the examples kept out of training to measure held-out loss."
    )
    replay_fraction: float = Field(
        0.08,
        ge=0.0,
        lt=0.9,
        description="Share of general instruction examples mixed into training against catastrophic forgetting.",
    )
    min_answer_chars: int = Field(2, ge=0, description="Turns whose answer is shorter than this are dropped.")
    regression_margin: float = Field(
        0.10, ge=0.0, le=10.0, description="Allowed relative rise of general-prompt perplexity over the base."
    )
