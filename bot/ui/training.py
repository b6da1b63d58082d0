"""The Training tab: choose the adapter and the log filters, preview the dataset, train, follow the run, roll back.

The controls are built from the :class:`training.request.TrainRequest`
fields that carry a :class:`training.request.Control`, so an option added
there shows up here. The tab holds no training code: it starts runs through
the admin actions, on the one run manager the HTTP admin API uses too, polls
it while a run is active, and only formats what training reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby
from typing import Any, Literal, get_args, get_origin

import gradio as gr
from pydantic.fields import FieldInfo

from bot.admin import Admin
from bot.training_runs import ACTIVE_STATES
from bot.ui.guard import PRIVATE, AdminToken, given, user_errors
from bot.ui.views import dataset_markdown, loss_frame, plain, report_markdown, run_markdown
from core.errors import InvalidRequestError
from core.sections import TrainingDefaults
from training.request import Control, bound, fields_with, parse_request, value_type

THIS_ADAPTER = "(this adapter)"  # not a valid adapter name, so it cannot shadow one
POLL_SECONDS = 2.0


class Training:
    def __init__(self, admin: Admin, token: AdminToken, defaults: TrainingDefaults) -> None:
        self.admin = admin
        self.token = token
        self.defaults = defaults
        # in the order they are shown, which is the order of their values in every handler
        self.fields = dict(sorted(fields_with(Control).items(), key=lambda item: item[1][1].row))

    def build(self, tab: gr.Tab) -> None:
        """The tab's components and events, built inside ``tab``; opening it refreshes the adapter choices."""
        token = self.token.box("training-token")
        controls = self._controls()
        with gr.Row():
            preview_button = gr.Button("Preview dataset", elem_id="training-preview-button")
            start_button = gr.Button("Start training", variant="primary", elem_id="training-start")
            rollback_button = gr.Button("Roll back", variant="stop", elem_id="training-rollback")
        preview_view = gr.Markdown(elem_id="training-preview")
        status_view = gr.Markdown(elem_id="training-status")
        plot = gr.LinePlot(
            loss_frame({}), x="step", y="loss", label="Training loss", x_title="step", y_title="loss",
            y_axis_format=".3f", height=260, elem_id="training-loss",
        )
        report_view = gr.Markdown(elem_id="training-report")
        rollback_view = gr.Markdown(elem_id="training-rollback-status")
        run_id = gr.State(None)
        timer = gr.Timer(POLL_SECONDS, active=False)

        inputs = [token, *controls.values()]
        views = [status_view, plot, report_view, timer]
        preview_button.click(self.preview, inputs, [preview_view], **PRIVATE)
        start_button.click(self.start, inputs, [run_id, *views], **PRIVATE)
        timer.tick(self.poll, [token, run_id], views, **PRIVATE)
        rollback_button.click(self.rollback, [token, controls["adapter"]], [rollback_view], **PRIVATE)
        tab.select(self.refresh_names, None, [controls["adapter"], controls["log_adapter"]], **PRIVATE)
        for shown in (tab.select, token.change):  # whichever comes last, the tab or the token
            shown(self.follow_active, [token, run_id], [run_id, *views], **PRIVATE)

    def _controls(self) -> dict[str, gr.Component]:
        """One control per request field that has one, laid out in the rows its Control names."""
        names = self.admin.adapter_names()
        controls = {}
        for _, row in groupby(self.fields.items(), key=lambda item: item[1][1].row):
            with gr.Row():
                for name, (field, control) in row:
                    controls[name] = self._control(name, field, control, names)
        return controls

    def _control(self, name: str, field: FieldInfo, control: Control, names: list[str]) -> gr.Component:
        """The component for one field: its kind from the field's type, its default from the settings or the field.

        The two adapter fields offer the installed adapters (``names``) and take a new name too.
        """
        shown = {"label": control.label, "info": control.info, "elem_id": f"training-{control.id or name.replace('_', '-')}"}
        kind = value_type(field)
        if name == "adapter":
            return gr.Dropdown(choices=names, value=None, allow_custom_value=True, scale=2, **shown)
        if name == "log_adapter":
            return gr.Dropdown(choices=log_choices(names), value=THIS_ADAPTER, allow_custom_value=True, **shown)
        if get_origin(kind) is Literal:
            return gr.Radio(choices=list(get_args(kind)), value=field.default, **shown)
        if kind is bool:
            return gr.Checkbox(value=field.default, **shown)
        if kind is int:
            value = getattr(self.defaults, name, field.default)
            return gr.Number(value=value, minimum=bound(field, "ge"), precision=0, **shown)
        return gr.Textbox(placeholder=control.placeholder, **shown)

    def request(self, values: Sequence[Any]) -> dict[str, Any]:
        """The controls as TrainRequest fields; an empty box means the setting's default."""
        fields = {}
        for (name, (field, _)), value in zip(self.fields.items(), values, strict=True):
            value = given(value) if isinstance(value, str) else value
            if value is not None and value_type(field) is int:
                value = int(value)
            fields[name] = value
        if not fields["adapter"]:
            raise InvalidRequestError("choose an adapter, or type a new name, to train")
        if fields["log_adapter"] == THIS_ADAPTER:
            fields["log_adapter"] = None
        return {"from_logs": True, **{name: value for name, value in fields.items() if value is not None}}

    @staticmethod
    def run_view(status: dict[str, Any]) -> tuple:
        """Status, loss plot and report of a run; the timer keeps polling only while the run is active."""
        active = status["state"] in ACTIVE_STATES
        return run_markdown(status), loss_frame(status), report_markdown(status["report"]), gr.Timer(active=active)

    @user_errors
    def preview(self, token: str, *values: Any) -> str:
        self.token.check(token)
        return dataset_markdown(self.admin.preview_training(parse_request(self.request(values))))

    @user_errors
    def start(self, token: str, *values: Any) -> tuple:
        self.token.check(token)
        started = self.admin.start_training(self.request(values))
        return (started, *self.run_view(self.admin.training_status(started)))

    @user_errors
    def poll(self, token: str, current: str) -> tuple:
        self.token.check(token)
        return self.run_view(self.admin.training_status(current))

    def follow_active(self, token: str, current: str | None) -> tuple:
        """Opening the tab shows the run in progress, whichever replica started it (one runs at a time)."""
        if current is not None or not self.token.valid(token):
            return (gr.skip(),) * 5
        status = self.admin.active_training()
        if status is None:
            return (gr.skip(),) * 5
        return (status["run_id"], *self.run_view(status))

    @user_errors
    def rollback(self, token: str, name: str | None) -> str:
        self.token.check(token)
        name = given(name)
        if not name:
            raise gr.Error("Choose the adapter to roll back.")
        manifest = self.admin.rollback_adapter(name)
        return f"**{plain(name)}** serves v{manifest.version} again."

    def refresh_names(self) -> tuple:
        """Adapters installed since the page loaded (by a run, an upload, the CLI) show up when the tab opens."""
        names = self.admin.adapter_names()
        return gr.update(choices=names), gr.update(choices=log_choices(names))


def log_choices(names: list[str]) -> list[str]:
    """Whose logged turns to train on: the adapter being trained, the base model, anyone, or a named adapter."""
    return [THIS_ADAPTER, "base", "any", *names]
