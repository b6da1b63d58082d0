"""QLoRA fine-tuning: chats in, a PEFT LoRA folder out.

The recipe reads top to bottom: set up (a base model instance of our own,
the marked chat template, LoRA, TRL's SFTTrainer), check the loss mask,
fit, save. Training never shares the serving engine's model, because
``prepare_model_for_kbit_training`` changes the model it is given.

Everything a run writes goes into its run folder: ``recipe.json``,
``log_history.json``, ``loss.png`` and ``candidate/`` (the adapter). Nothing
outside that folder changes, so a run killed midway leaves the adapter
registry as it was.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import ConfigError, SwitchboardError
from core.settings import Settings
from training.recipe import Recipe

log = logging.getLogger(__name__)

Chat = list[dict]


class TrainingError(SwitchboardError):
    """A training run could not start or finish."""


@dataclass(frozen=True)
class Progress:
    """Where a run stands; handed to the progress callback after every optimizer step and evaluation."""

    step: int
    total: int
    epoch: float
    loss: float | None
    eval_loss: float | None
    elapsed_s: float
    eta_s: float | None


ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class FinetuneResult:
    run_dir: Path
    adapter_dir: Path
    steps: int
    epochs: float
    train_loss: float | None
    best_eval_loss: float | None
    stopped_early: bool
    cancelled: bool
    seconds: float
    tokens_seen: int
    tokens_per_s: float
    base_bytes: int = 0  # memory held by the base model's weights as loaded for training (4-bit or full)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["run_dir"], data["adapter_dir"] = str(self.run_dir), str(self.adapter_dir)
        return data


def load_training_base(settings: Settings, recipe: Recipe):
    """A fresh base model instance for training: 4-bit for QLoRA, full precision for plain LoRA."""
    from engine.base_model import load_base

    wanted = "nf4" if recipe.quantized else "none"
    return load_base(settings if settings.quantization == wanted else settings.model_copy(update={"quantization": wanted}))


def _lora_model(base, recipe: Recipe):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = base.model
    if base.quantized:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=recipe.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif recipe.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    config = LoraConfig(
        r=recipe.rank,
        lora_alpha=recipe.alpha,
        lora_dropout=recipe.dropout,
        target_modules=list(recipe.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError(f"LoRA target modules {recipe.target_modules} do not fit this base model: {exc}") from exc


class _RunCallback:
    """Progress with an ETA, and cancellation, seen by the trainer after every step."""

    def __init__(self, total: int, progress: ProgressFn | None, should_stop: Callable[[], bool] | None) -> None:
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                outer.started = time.perf_counter()

            def on_log(self, args, state, control, logs=None, **kwargs):
                logs = logs or {}
                if "loss" in logs:
                    outer.loss = float(logs["loss"])
                if "eval_loss" in logs:
                    outer.eval_loss = float(logs["eval_loss"])
                outer.report(state)

            def on_step_end(self, args, state, control, **kwargs):
                if outer.should_stop and outer.should_stop():
                    outer.cancelled = True
                    control.should_training_stop = True

        self.callback = Callback()
        self.total = total
        self.progress = progress
        self.should_stop = should_stop
        self.started = time.perf_counter()
        self.loss: float | None = None
        self.eval_loss: float | None = None
        self.cancelled = False
        self.last: tuple[int, float | None] | None = None

    def report(self, state) -> None:
        """Once per step, and again when an evaluation brings a held-out loss."""
        key = (int(state.global_step), self.eval_loss)
        if self.progress is None or key == self.last:
            return
        self.last = key
        elapsed = time.perf_counter() - self.started
        step = int(state.global_step)
        eta = elapsed / step * (self.total - step) if step else None
        self.progress(
            Progress(step, self.total, float(state.epoch or 0.0), self.loss, self.eval_loss, elapsed, eta)
        )


def verify_loss_mask(trainer, tokenizer) -> None:
    """Fail before training unless the labels cover exactly the answers, each ending in the end-of-turn token.

    The pad token of many chat models (SmolLM2's included) is the end-of-turn
    token itself; padding must not mask it, or the adapter never learns to stop.
    """
    dataset = trainer.train_dataset
    rows = [dataset[i] for i in range(min(2, len(dataset)))]
    batch = trainer.data_collator([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    labels, input_ids = batch["labels"], batch["input_ids"]
    end_id = tokenizer.convert_tokens_to_ids(trainer.args.eos_token) if trainer.args.eos_token else tokenizer.eos_token_id
    for row, (row_labels, row_ids) in enumerate(zip(labels.tolist(), input_ids.tolist())):
        trained = [i for i, label in enumerate(row_labels) if label != -100]
        if not trained:
            raise TrainingError("the loss mask selects no answer tokens; check the chat template")
        if any(row_labels[i] != row_ids[i] for i in trained):
            raise TrainingError("the loss labels do not match the input tokens")
        real_length = len(rows[row]["input_ids"])
        if trained[-1] >= real_length:
            raise TrainingError("padding tokens are trained")
        if row_ids[trained[-1]] != end_id and real_length < trainer.args.max_length:
            raise TrainingError("the end-of-turn token is not trained, so the adapter would not learn to stop")


def _sft_config(recipe: Recipe, run_dir: Path, device_type: str, has_eval: bool):
    import torch
    from trl import SFTConfig

    bf16 = device_type == "cuda" and torch.cuda.is_bf16_supported()
    return SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        max_steps=recipe.max_steps,
        per_device_train_batch_size=recipe.batch_size,
        per_device_eval_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.scheduler,
        warmup_steps=recipe.warmup_ratio,
        weight_decay=recipe.weight_decay,
        optim=recipe.resolved_optimizer(device_type),
        gradient_checkpointing=recipe.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        max_length=recipe.max_length,
        assistant_only_loss=True,
        bf16=bf16,
        fp16=False,
        use_cpu=device_type == "cpu",
        seed=recipe.seed,
        data_seed=recipe.seed,
        logging_steps=1,
        eval_strategy="epoch" if has_eval else "no",
        save_strategy="epoch" if has_eval else "no",
        save_total_limit=1,
        load_best_model_at_end=has_eval,
        metric_for_best_model="eval_loss" if has_eval else None,
        greater_is_better=False if has_eval else None,
        include_num_input_tokens_seen=True,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length",  # batches of similar lengths: little compute spent on padding
        dataset_num_proc=None,
    )


def plot_losses(log_history: list[dict], path: Path) -> None:
    """Training loss per step and held-out loss per epoch, as a PNG next to the run's numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    held_out = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="training loss")
    if held_out:
        ax.plot(*zip(*held_out), marker="o", label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def finetune(
    settings: Settings,
    train: Sequence[Chat],
    run_dir: Path,
    *,
    recipe: Recipe | None = None,
    held_out: Sequence[Chat] = (),
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FinetuneResult:
    """Train a LoRA adapter on ``train`` chats (each a list of ``{"role","content"}`` ending with the answer)."""
    from datasets import Dataset
    from transformers import EarlyStoppingCallback
    from trl import SFTTrainer

    from training.chat_template import training_template

    recipe = recipe or Recipe.from_defaults(settings.training)
    if not train:
        raise TrainingError("no training examples")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.json").write_text(recipe.model_dump_json(indent=2), encoding="utf-8")

    # Setup: our own base instance, the marked template, LoRA, the trainer.
    import transformers

    transformers.set_seed(recipe.seed)  # before the LoRA factors are initialised, which draw from the global generator
    base = load_training_base(settings, recipe)
    tokenizer = base.tokenizer
    tokenizer.chat_template = training_template(tokenizer)
    tokenizer.padding_side = "right"
    model = _lora_model(base, recipe)
    args = _sft_config(recipe, run_dir, base.device.type, has_eval=bool(held_out))
    run = _RunCallback(recipe.max_steps, progress, should_stop)
    callbacks = [run.callback]
    if held_out and recipe.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.early_stopping_patience))
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([{"messages": list(chat)} for chat in train]),
        eval_dataset=Dataset.from_list([{"messages": list(chat)} for chat in held_out]) if held_out else None,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    # With tqdm off the trainer prints every log dict to stdout, where `--json` promises one JSON document;
    # the run's own callback reports progress on stderr instead.
    trainer.remove_callback(transformers.PrinterCallback)
    verify_loss_mask(trainer, tokenizer)

    # Fit.
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started

    # Save the candidate and the run's record.
    adapter_dir = run_dir / "candidate"
    trainer.model.save_pretrained(adapter_dir)
    history = trainer.state.log_history
    (run_dir / "log_history.json").write_text(json.dumps(history, indent=2), encoding="utf-8")
    plot_losses(history, run_dir / "loss.png")
    _remove_checkpoints(run_dir / "checkpoints")
    steps = int(trainer.state.global_step)
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    best = trainer.state.best_metric if held_out else None
    return FinetuneResult(
        run_dir=run_dir,
        adapter_dir=adapter_dir,
        steps=steps,
        epochs=float(trainer.state.epoch or 0.0),
        train_loss=float(output.training_loss) if output.training_loss is not None else None,
        best_eval_loss=None if best is None or math.isinf(best) else float(best),
        stopped_early=steps < recipe.max_steps and not run.cancelled,
        cancelled=run.cancelled,
        seconds=seconds,
        tokens_seen=tokens,
        tokens_per_s=tokens / seconds if seconds > 0 else 0.0,
        base_bytes=base.footprint_bytes,
    )


def _remove_checkpoints(folder: Path) -> None:
    """The best weights are loaded and saved as the candidate; intermediate checkpoints only cost disk."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
