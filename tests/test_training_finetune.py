"""QLoRA fine-tuning on the real 4-bit base: the loss mask, the run folder, and a style the adapter learns."""

from __future__ import annotations

import json

import pytest
from conftest import STYLE_HELD_OUT_PROMPTS, STYLE_SIGN_OFF, style_chats

pytestmark = pytest.mark.slow  # trains adapters


@pytest.fixture(scope="module")
def base_and_adapter(make_settings, tmp_path_factory, style_adapter):
    from peft import PeftModel

    from engine.base_model import load_base

    base = load_base(make_settings(tmp_path_factory.mktemp("finetune-eval")))
    return base, PeftModel.from_pretrained(base.model, style_adapter)


def test_style_adapter_is_a_peft_folder_with_the_run_record(style_adapter):
    assert (style_adapter / "adapter_config.json").is_file()
    assert (style_adapter / "adapter_model.safetensors").stat().st_size > 0
    config = json.loads((style_adapter / "adapter_config.json").read_text())
    assert config["r"] == 8
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    run_dir = style_adapter.parent
    history = json.loads((run_dir / "log_history.json").read_text())
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert losses[-1] < losses[0] / 3, losses
    assert (run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run_dir / "recipe.json").read_text())["max_steps"] == 16
    assert not (run_dir / "checkpoints").exists()


def test_trained_adapter_signs_off_where_the_base_does_not(base_and_adapter):
    from training.evaluate import greedy_answers

    base, peft_model = base_and_adapter
    prompts = [[{"role": "user", "content": p}] for p in STYLE_HELD_OUT_PROMPTS]
    with peft_model.disable_adapter():
        plain = greedy_answers(peft_model, base.tokenizer, prompts, max_new_tokens=24)
    styled = greedy_answers(peft_model, base.tokenizer, prompts, max_new_tokens=24)
    assert sum(STYLE_SIGN_OFF in answer for answer in plain) == 0, plain
    assert sum(STYLE_SIGN_OFF in answer for answer in styled) >= 3, styled


def test_loss_mask_covers_the_answer_and_its_end_of_turn_token(base_and_adapter):
    """The pad token is <|im_end|> itself: the trained stop token must survive padding."""
    from training.chat_template import assistant_spans, training_template

    tokenizer = base_and_adapter[0].tokenizer
    template = training_template(tokenizer)
    chat = style_chats()[0]
    ids, mask = assistant_spans(tokenizer, chat, template)
    trained = [token for token, keep in zip(ids, mask) if keep]
    assert tokenizer.decode(trained) == chat[-1]["content"] + "<|im_end|>"
    assert trained[-1] == tokenizer.pad_token_id == tokenizer.eos_token_id
    # The marked copy renders exactly what the served template renders.
    assert tokenizer.apply_chat_template(chat, tokenize=False, chat_template=template) == tokenizer.apply_chat_template(
        chat, tokenize=False
    )


def test_held_out_loss_equals_the_models_own_loss_on_the_answer_tokens(base_and_adapter):
    """Scoring only the answer positions, batched over chats of different lengths, changes no figure."""
    import torch

    from training.chat_template import assistant_spans, training_template
    from training.evaluate import answer_nll

    base, peft_model = base_and_adapter
    tokenizer, template = base.tokenizer, training_template(base.tokenizer)
    chats = style_chats()[:5]
    total, tokens = 0.0, 0
    for chat in chats:
        ids, mask = assistant_spans(tokenizer, chat, template)
        labels = torch.tensor([[t if m else -100 for t, m in zip(ids, mask)]])
        with torch.no_grad():
            loss = peft_model(input_ids=torch.tensor([ids]), labels=labels).loss
        total, tokens = total + float(loss) * sum(mask), tokens + sum(mask)
    report = answer_nll(peft_model, tokenizer, chats, template, batch_size=3)
    assert report.tokens == tokens
    assert report.loss == pytest.approx(total / tokens, abs=1e-4)


def test_a_run_prints_nothing_on_stdout(make_settings, tmp_path, capfd):
    """`switchboard train --json` promises one JSON document on stdout: the trainer's own log lines must not land there."""
    from training.finetune import finetune
    from training.recipe import Recipe

    recipe = Recipe(max_steps=2, batch_size=2, max_length=64, dropout=0.0, gradient_checkpointing=False)
    chats = style_chats()
    result = finetune(make_settings(tmp_path / "home"), chats[:8], tmp_path / "run", recipe=recipe, held_out=chats[8:10])
    out, err = capfd.readouterr()
    assert result.adapter_dir.is_dir()
    assert out == "", out[:500]


def test_the_recipe_seed_fixes_the_adapter_whatever_ran_before(make_settings, tmp_path):
    """Same data and seed, the global generator left differently by what ran before: byte-identical adapters.

    The LoRA factors are initialised from the global generator; seeding after that made a process's first
    run differ from the next (the demo support adapter's format rate moved between 75% and 92%)."""
    import torch

    from training.finetune import finetune
    from training.recipe import Recipe

    recipe = Recipe(max_steps=1, batch_size=2, max_length=64, dropout=0.0, gradient_checkpointing=False)
    settings, chats = make_settings(tmp_path / "home"), style_chats()[:4]
    weights = []
    for earlier in (1, 2):
        torch.manual_seed(earlier)  # what an earlier run, test or request left in the global generator
        result = finetune(settings, chats, tmp_path / f"run{earlier}", recipe=recipe)
        weights.append((result.adapter_dir / "adapter_model.safetensors").read_bytes())
    assert weights[0] == weights[1]
