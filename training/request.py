"""What an operator asks of a training run, and how each edge offers it.

:class:`TrainRequest` is the one description of a run's options. The HTTP
admin API validates its body against it; ``switchboard train`` builds its
options from the fields that carry a :class:`Flag`, the UI's Training tab its
controls from those that carry a :class:`Control` (type, default and bounds
come from the field itself). A new option is therefore added here only, and
reaches the fine-tuning recipe, the dataset options and the log filters by
its name (:meth:`TrainRequest.overrides`).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from adapters.manifest import check_name
from core.errors import InvalidRequestError, validation_message


@dataclass(frozen=True)
class Flag:
    """A field's ``switchboard train`` option: its help line, and where it differs from ``--field-name <type>``."""

    help: str
    name: str | None = None  # a field that defaults to on is a switch that turns it off, named e.g. --no-sources
    path: bool = False  # the value is a path on this machine
    read: bool = False  # the option names a file; the value is its text


@dataclass(frozen=True)
class Control:
    """A field's control in the UI's Training tab, in row ``row`` (the rows in order, each left to right)."""

    label: str
    info: str
    row: int
    id: str | None = None  # the element id is training-<id>; by default the field name with dashes
    placeholder: str | None = None


class TrainRequest(BaseModel):
    """What an operator asks for: which adapter, from which data, with which overrides."""

    model_config = ConfigDict(extra="forbid")

    adapter: Annotated[
        str,
        Flag("Adapter to train; a new name creates it."),
        Control(
            "Adapter", "An installed adapter gets its next version; type a new name (a-z, 0-9, '-', '_') to create one.", 0
        ),
    ] = Field(description="Adapter to train; a new name creates it, an existing one gets its next version.")
    from_logs: Annotated[bool, Flag("Train on rated and corrected turns of the conversation log.")] = Field(
        False, description="Take examples from the conversation log."
    )
    data: Annotated[list[str], Flag("JSONL chats (OpenAI, Alpaca or ShareGPT); repeatable.", path=True)] = Field(
        default_factory=list, description="JSONL files of chats (OpenAI, Alpaca or ShareGPT)."
    )
    log_adapter: Annotated[
        str | None,
        Flag("Logged turns of which adapter: default the one trained, 'base', or 'any'."),
        Control(
            "Logged turns of", "Turns answered by the adapter being trained, by the base model ('base'), or by anyone ('any').", 1
        ),
    ] = Field(
        None,
        description="Logged turns of which adapter: None for the adapter being trained, 'base' for no adapter, 'any' for all.",
    )
    rating: Annotated[
        Literal["up", "down", "any"],
        Flag("Latest rating of logged turns: up, down or any."),
        Control("Rating", "The latest rating a logged turn must carry.", 1),
    ] = Field("up", description="Latest rating a logged turn must carry.")
    include_corrections: Annotated[
        bool,
        Control(
            "Include corrected turns", "Corrected turns count whatever their rating; the correction becomes the answer.", 1,
            id="corrections",
        ),
    ] = Field(True, description="Also take corrected turns, with the correction as the answer.")
    since: Annotated[
        str | None,
        Flag("Logged turns from this ISO date on."),
        Control("Since", "Logged turns from this ISO date or time on; empty for no limit.", 2, placeholder="2025-01-31"),
    ] = Field(None, description="Logged turns from this ISO date or time on.")
    until: Annotated[
        str | None,
        Flag("Logged turns before this ISO date."),
        Control("Until", "Logged turns before this ISO date or time; empty for no limit.", 2, placeholder="2025-12-31"),
    ] = Field(None, description="Logged turns before this ISO date or time.")
    include_sources: Annotated[
        bool,
        Flag("Train without the retrieved sources in the prompt.", name="--no-sources"),
        Control(
            "Train with the sources",
            "Keep the retrieved sources in the prompt, as served, so the adapter learns to answer from them.", 3,
            id="sources",
        ),
    ] = Field(True, description="Train with the retrieved sources in the prompt, as served.")
    min_answer_chars: Annotated[
        int | None,
        Control("Shortest answer (characters)", "Turns whose answer is shorter are dropped.", 2, id="min-chars"),
    ] = Field(None, ge=0, description="Drop examples whose answer is shorter (default from settings).")
    max_steps: Annotated[
        int | None,
        Flag("Optimizer steps."),
        Control(
            "Max steps",
            "Optimizer steps of the run: a few seconds each for the 135M default on two CPU cores, far less on a GPU.", 0,
        ),
    ] = Field(None, ge=1, description="Optimizer steps (default from settings).")
    rank: Annotated[int | None, Flag("LoRA rank.")] = Field(
        None, ge=1, le=1024, description="LoRA rank (default from settings)."
    )
    learning_rate: Annotated[float | None, Flag("Peak learning rate.")] = Field(
        None, gt=0, lt=1, description="Peak learning rate (default from settings)."
    )
    batch_size: int | None = Field(None, ge=1, description="Examples per step (default from settings).")
    dropout: float | None = Field(None, ge=0, lt=1, description="LoRA dropout (default 0.05); 0 trains faster on a CPU.")
    gradient_checkpointing: bool | None = Field(
        None, description="Recompute activations to save memory (default on); off is faster where memory is plentiful."
    )
    replay_fraction: float | None = Field(None, ge=0, lt=0.9, description="Share of general replay data.")
    seed: int | None = Field(None, description="Seed of the split, replay sample and training.")
    golden: Annotated[
        str | None,
        Flag("Golden set JSONL to score the candidate on.", path=True),
        Control(
            "Golden set (optional)", "A JSONL file on the server; the candidate and the live version are scored on it.", 3,
            placeholder="/path/on/the/server/golden.jsonl",
        ),
    ] = Field(None, description="Golden set JSONL to score the candidate (and the live version) on.")
    force: Annotated[
        bool,
        Flag("Install even if the gate fails (recorded in the manifest)."),
        Control(
            "Deploy even if the gate rejects it", "Installs the candidate whatever the evaluation says; recorded in its manifest.", 3
        ),
    ] = Field(False, description="Install even when the gate fails; recorded in the manifest.")
    description: Annotated[str | None, Flag("Description of a new adapter.")] = Field(
        None, description="Description of a new adapter."
    )
    system_prompt: Annotated[
        str | None, Flag("File with the system prompt of a new adapter.", path=True, read=True)
    ] = Field(None, description="System prompt of a new adapter.")
    examples: list[str] | None = Field(None, description="Routing examples of a new adapter (default: training questions).")

    @field_validator("adapter")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @model_validator(mode="after")
    def _some_data(self) -> "TrainRequest":
        if not self.from_logs and not self.data:
            raise ValueError("give training data: from_logs, data files, or both")
        return self

    def overrides(self, model: type[BaseModel]) -> dict[str, Any]:
        """What this request sets of ``model``'s fields, matched by name; a field left unset (None) is left out."""
        given = ((name, getattr(self, name)) for name in model.model_fields if name in type(self).model_fields)
        return {name: value for name, value in given if value is not None}


def parse_request(data: dict[str, Any]) -> TrainRequest:
    """A request from the CLI, the UI or the HTTP body, or one clear error line naming the field."""
    try:
        return TrainRequest.model_validate(data)
    except ValidationError as exc:
        message = validation_message(exc, "training request: {field}: {problem}", "training request: {problem}")
        raise InvalidRequestError(message) from None


Note = TypeVar("Note", Flag, Control)


def fields_with(note: type[Note]) -> dict[str, tuple[FieldInfo, Note]]:
    """The request's fields that carry a ``note`` (a Flag or a Control), in their order, each with its note."""
    found = {}
    for name, field in TrainRequest.model_fields.items():
        notes = [m for m in field.metadata if isinstance(m, note)]
        if notes:
            found[name] = (field, notes[0])
    return found


def value_type(field: FieldInfo) -> Any:
    """The type of a field's value once given: ``int`` for ``int | None``."""
    annotation = field.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    return annotation


def bound(field: FieldInfo, name: str) -> Any:
    """One bound of a field (``ge``, ``le``, ``gt``, ``lt``), or None."""
    return next((getattr(m, name) for m in field.metadata if hasattr(m, name)), None)
