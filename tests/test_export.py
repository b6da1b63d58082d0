"""Adapters leaving Switchboard: merged, GGUF, Ollama and PEFT exports of real adapters, checked on the other side.

One registry holds a random LoRA on every attention projection (so Llama's
Q/K permutation matters to the merged GGUF and to the GGUF adapter). Each
format is exported once per module and read back with plain transformers,
the gguf reader, or by installing it again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import InvalidAdapterError, InvalidRequestError, NotFoundError
from tests.cli import ROOT, cli_env, command, switchboard

pytestmark = pytest.mark.slow  # merges and converts adapters (GGUF, Ollama) in processes of their own

GOLDEN = [
    "What colour is the sky on a clear day?",
    "Name a large ocean.",
    "How many legs does a spider have?",
]
NEW_TOKENS = 10
SYSTEM_PROMPT = "Answer in one short sentence."
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
RUN_ID = "run-export-test"


@pytest.fixture(scope="module")
def parts(make_settings, make_random_adapter, tmp_path_factory):
    """A home whose registry holds 'style' v1: a LoRA on q/k/v/o with metrics and a training run report."""
    from bot.parts import Parts

    home = tmp_path_factory.mktemp("export-home")
    parts = Parts(make_settings(home))
    report = {"dataset": {"counts": {"train": 20, "held_out": 4, "replay": 2}, "content_hash": "abc123"}}
    (parts.settings.runs_dir / RUN_ID).mkdir(parents=True)
    (parts.settings.runs_dir / RUN_ID / "report.json").write_text(json.dumps(report), encoding="utf-8")
    parts.registry.install(
        make_random_adapter(seed=41, targets=TARGETS),
        "style",
        description="Answers in the house style.",
        system_prompt=SYSTEM_PROMPT,
        generation={"repetition_penalty": 1.3},
        metrics={"held_out_loss": 1.234, "golden_pass_rate": 0.75},
        provenance={"source": "training", "run_id": RUN_ID},
    )
    return parts


def export(parts, fmt: str, out: Path, **fields) -> dict:
    from training.artifacts.builder import export_adapter
    from training.artifacts.config import export_config

    version = fields.pop("version", None)
    return export_adapter(parts.settings, parts.registry, "style", export_config(format=fmt, out=out, **fields), version)


def golden_batch(tokenizer) -> dict[str, torch.Tensor]:
    """The golden prompts as one left-padded batch: one generate call answers them all."""
    chats = [[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": p}] for p in GOLDEN]
    texts = [tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) for chat in chats]
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def answers(model, tokenizer) -> list[list[int]]:
    batch = golden_batch(tokenizer)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[:, batch["input_ids"].shape[1] :].tolist()


def last_logits(model, tokenizer) -> torch.Tensor:
    with torch.inference_mode():
        return model(**golden_batch(tokenizer)).logits[:, -1]


@pytest.fixture(scope="module")
def reference(parts):
    """The adapter as PEFT applies it to the full-precision base (not merged), and that base's own answers."""
    from peft import PeftModel

    from training.artifacts.merged import load_full_base

    base, tokenizer = load_full_base(parts.settings)
    base_answers = answers(base, tokenizer)
    base_weights = {k: v.clone() for k, v in base.state_dict().items() if "self_attn" in k}
    model = PeftModel.from_pretrained(base, parts.registry.adapter_dir("style"))
    model.eval()
    return {
        "tokenizer": tokenizer,
        "answers": answers(model, tokenizer),
        "logits": last_logits(model, tokenizer),
        "base_answers": base_answers,
        "base_weights": base_weights,
    }


@pytest.fixture(scope="module")
def merged(parts, tmp_path_factory):
    """One float32 merged export, loaded with plain transformers, shared by the tests below."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("exports") / "merged"
    result = export(parts, "merged", out, dtype="float32")
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    return {"result": result, "out": out, "model": model, "tokenizer": tokenizer, "base_model": parts.settings.base_model}


@pytest.fixture(scope="module")
def merged_answers(merged):
    return answers(merged["model"], merged["tokenizer"])


@pytest.fixture(scope="module")
def gguf_export(parts, tmp_path_factory) -> dict:
    return export(parts, "gguf", tmp_path_factory.mktemp("exports") / "gguf")


def test_merged_model_answers_as_the_adapter_does_without_peft(merged, merged_answers, reference):
    out = merged["out"]
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    assert type(merged["model"]).__name__ == "LlamaForCausalLM"
    assert merged_answers == reference["answers"]
    assert merged_answers != reference["base_answers"], "the adapter must change the answers, or this proves nothing"
    difference = (last_logits(merged["model"], merged["tokenizer"]) - reference["logits"]).abs().max().item()
    assert difference < 1e-3, f"merged logits differ from PEFT's by {difference}"
    assert merged["tokenizer"].chat_template == reference["tokenizer"].chat_template


def test_merged_export_reports_files_and_writes_a_model_card(merged):
    result, out = merged["result"], merged["out"]
    import hashlib

    listed = {f["path"]: f for f in result["files"]}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= set(listed)
    weights = listed["model.safetensors"]
    assert weights["bytes"] == (out / "model.safetensors").stat().st_size
    assert weights["sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert result["bytes"] == sum(f["bytes"] for f in result["files"])
    card = (out / "README.md").read_text(encoding="utf-8")
    for expected in (merged["base_model"], "style", "version 1", "train 20", "held out 4",
                     "held out loss | 1.234", "golden pass rate | 0.75", RUN_ID, SYSTEM_PROMPT):
        assert expected in card, expected
    assert not list(out.parent.glob(".merged.partial-*"))


def test_gguf_f16_reads_back_in_transformers_with_the_merged_answers(gguf_export, merged_answers, reference):
    from transformers import AutoModelForCausalLM

    out = Path(gguf_export["out"])
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file="style-v1-f16.gguf", dtype=torch.float32)
    model.eval()
    assert answers(model, reference["tokenizer"]) == merged_answers
    difference = (last_logits(model, reference["tokenizer"]) - reference["logits"]).abs().max().item()
    assert difference < 0.5, f"f16 GGUF logits differ from full precision by {difference}"


def test_gguf_vocabulary_and_metadata_match_the_tokenizer(gguf_export, reference):
    from gguf import GGUFReader, TokenType

    reader = GGUFReader(Path(gguf_export["out"]) / "style-v1-f16.gguf")
    fields = reader.fields
    tokenizer = reference["tokenizer"]
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    tokens = fields["tokenizer.ggml.tokens"].contents()
    assert tokens == [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    types = fields["tokenizer.ggml.token_type"].contents()
    assert types[tokenizer.convert_tokens_to_ids("<|im_end|>")] == TokenType.CONTROL
    assert types[tokenizer.convert_tokens_to_ids("Ġthe")] == TokenType.NORMAL
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.eos_token_id
    assert fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied head: llama.cpp reuses token_embd


def test_gguf_lora_adapter_is_llama_cpp_shaped_and_holds_the_merged_update(gguf_export, merged, reference, parts):
    """Read with the gguf reader and un-permuted with transformers' own GGUF code: B @ A * alpha / r is the update."""
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    reader = GGUFReader(Path(gguf_export["out"]) / "style-v1-lora.gguf")
    fields = reader.fields
    assert fields["general.type"].contents() == "adapter"
    assert fields["adapter.type"].contents() == "lora"
    manifest = parts.registry.get("style")
    alpha = fields["adapter.lora.alpha"].contents()
    assert alpha == pytest.approx(manifest.alpha)
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    config = merged["model"].config
    assert len(tensors) == 2 * len(TARGETS) * config.num_hidden_layers
    unpermute = LlamaTensorProcessor({"num_attention_heads": config.num_attention_heads,
                                      "num_key_value_heads": config.num_key_value_heads})
    merged_weights = merged["model"].state_dict()
    for layer in (0, config.num_hidden_layers - 1):
        for gguf_name, hf_name in (("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj"), ("attn_output", "o_proj")):
            a = tensors[f"blk.{layer}.{gguf_name}.weight.lora_a"]
            b = tensors[f"blk.{layer}.{gguf_name}.weight.lora_b"]
            assert a.shape[0] == b.shape[1] == manifest.rank  # lora_a: (r, in) rows, lora_b: (out, r)
            update = unpermute.process(b @ a * (alpha / manifest.rank), f"blk.{layer}.{gguf_name}.weight").weights
            key = f"model.layers.{layer}.self_attn.{hf_name}.weight"
            expected = (merged_weights[key] - reference["base_weights"][key]).numpy()
            np.testing.assert_allclose(update, expected, atol=1e-5)


def test_ollama_export_writes_a_q8_0_gguf_and_a_modelfile_in_go_template_form(parts, tmp_path, merged, reference):
    from gguf import GGMLQuantizationType, GGUFReader, dequantize

    out = tmp_path / "ollama"
    result = export(parts, "ollama", out, dtype="q8_0")
    assert sorted(f["path"] for f in result["files"]) == ["Modelfile", "README.md", "style-v1-q8_0.gguf"]
    text = (out / "Modelfile").read_text(encoding="utf-8")
    assert text.startswith("FROM ./style-v1-q8_0.gguf\n")
    assert f'SYSTEM """{SYSTEM_PROMPT}"""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert "PARAMETER repeat_penalty 1.3" in text
    assert "{%" not in text  # no Jinja left
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    expected = reference["tokenizer"].apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert render_go_chatml(template, messages) == expected
    # q8_0, loosely: every quantized weight within a block's rounding step of the merged model's.
    reader = GGUFReader(out / "style-v1-q8_0.gguf")
    weights = {t.name: t for t in reader.tensors}
    down = weights["blk.3.ffn_down.weight"]
    assert down.tensor_type == GGMLQuantizationType.Q8_0
    restored = dequantize(down.data, down.tensor_type).reshape(merged["model"].config.hidden_size, -1)
    original = merged["model"].state_dict()["model.layers.3.mlp.down_proj.weight"].numpy()
    assert np.abs(restored - original).max() <= np.abs(original).max() / 127 + 1e-6


def render_go_chatml(template: str, messages: list[dict]) -> str:
    """What Ollama's Go template makes of ``messages``: its one ``range .Messages`` loop, then the tail."""
    head, rest = template.split("{{- range .Messages }}", 1)
    body, tail = rest.split("{{ end }}", 1)
    rows = [body.replace("{{ .Role }}", m["role"]).replace("{{ .Content }}", m["content"]) for m in messages]
    return head + "".join(rows) + tail


def test_peft_export_installs_again_and_prints_the_vllm_line(parts, tmp_path):
    from adapters.registry import Registry

    out = tmp_path / "peft"
    result = export(parts, "peft", out)
    source = parts.registry.adapter_dir("style")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (out / name).read_bytes() == (source / name).read_bytes()
    assert result["usage"] == [
        f"vllm serve {parts.settings.base_model} --enable-lora --lora-modules style={out} --max-lora-rank 8"
    ]
    again = Registry(tmp_path / "again", parts.registry.fingerprint).install(out, "style-copy")
    assert again.rank == 8


def test_cli_export_prints_one_json_document(parts, tmp_path):
    out = tmp_path / "cli-peft"
    done = switchboard(parts.settings.home, "export", "style@1", "--format", "peft", "--out", str(out), "--json",
                       base_model=parts.settings.base_model)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["adapter"] == "style" and result["version"] == 1 and result["out"] == str(out)
    assert {f["path"] for f in result["files"]} == {"adapter_config.json", "adapter_model.safetensors", "manifest.json", "README.md"}


def test_cli_refuses_a_bad_request_with_one_line(parts, tmp_path):
    """One process: every other refusal below goes through the same edge (library error, one line, exit 1)."""
    out = tmp_path / "out"
    done = switchboard(parts.settings.home, "export", "style@x", "--format", "peft", "--out", str(out),
                       base_model=parts.settings.base_model)
    assert done.returncode == 1 and "NAME@VERSION" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"format": "peft", "version": 7}, NotFoundError, "has no version 7"),
        ({"format": "onnx"}, InvalidRequestError, "Input should be 'merged', 'gguf', 'ollama' or 'peft'"),
        ({"format": "merged", "dtype": "q8_0"}, InvalidRequestError, "does not apply to format merged"),
        ({"format": "peft", "dtype": "f16"}, InvalidRequestError, "does not apply to format peft"),
    ],
)
def test_refuses_unknown_versions_formats_and_precisions(parts, tmp_path, fields, error, message):
    with pytest.raises(error, match=message):
        export(parts, fields.pop("format"), tmp_path / "out", **fields)
    assert list(tmp_path.iterdir()) == []


def test_refuses_an_existing_folder_unless_forced(parts, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InvalidRequestError, match="exists"):
        export(parts, "peft", out)
    assert (out / "keep.txt").read_text() == "mine"
    export(parts, "peft", out, force=True)
    assert not (out / "keep.txt").exists() and (out / "adapter_model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_refuses_when_the_disk_would_fill(parts, tmp_path):
    import shutil

    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(InvalidRequestError, match="not enough disk space"):
        export(parts, "merged", tmp_path / "big", keep_free_bytes=free)
    assert list(tmp_path.iterdir()) == []


def test_refuses_an_adapter_whose_base_does_not_match(parts, make_random_adapter, tmp_path, base_model_dir):
    """An adapter for other shapes (installed without a base check) and one recorded for another base."""
    from transformers import AutoConfig

    from adapters.registry import Registry

    wide = AutoConfig.from_pretrained(base_model_dir)
    wide.hidden_size = 640  # q_proj then reads 640 features where the base has 576
    unchecked = Registry(parts.registry.root)  # no fingerprint: accepts any shapes
    unchecked.install(make_random_adapter(seed=43, model_config=wide), "wide")
    with pytest.raises(InvalidAdapterError, match="does not fit"):
        export_named(parts, "wide", tmp_path / "wide")
    parts.registry.install(make_random_adapter(seed=44), "moved")
    parts.registry.update("moved", fingerprint={**parts.registry.get("moved").fingerprint, "num_layers": 12})
    with pytest.raises(InvalidAdapterError, match="num_layers=12"):
        export_named(parts, "moved", tmp_path / "moved")
    with pytest.raises(NotFoundError):
        export_named(parts, "absent", tmp_path / "absent")
    assert list(tmp_path.iterdir()) == []


def export_named(parts, name: str, out: Path) -> dict:
    from training.artifacts.builder import export_adapter
    from training.artifacts.config import export_config

    return export_adapter(parts.settings, parts.registry, name, export_config(format="peft", out=out))


def test_an_unsupported_architecture_is_named_in_one_error():
    from transformers import GPT2Config

    from training.artifacts.gguf import gguf_arch

    with pytest.raises(InvalidRequestError, match="supports LlamaForCausalLM, Qwen2ForCausalLM .* the base is GPT2LMHeadModel"):
        gguf_arch(GPT2Config(architectures=["GPT2LMHeadModel"]))


def test_a_killed_export_leaves_nothing_behind(parts, tmp_path):
    """kill -9 while the merged weights are being written: no target, and the next export sweeps the partial folder."""
    out = tmp_path / "killed"
    process = subprocess.Popen(
        command("export", "style", "--format", "merged", "--dtype", "float32", "--out", str(out)),
        cwd=ROOT, env=cli_env(parts.settings.home, parts.settings.base_model),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    try:
        while not any(p.is_file() for p in tmp_path.glob(".killed.partial-*/*")):
            assert process.poll() is None, "the export ended before it was killed"
            assert time.monotonic() < deadline, "the export never started writing"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not out.exists()
    export(parts, "peft", out)
    assert [p.name for p in tmp_path.iterdir()] == ["killed"]


def test_admin_api_exports_and_serves_a_zip_with_the_token_only(live_server, tmp_path):
    import zipfile

    import httpx

    headers = {"Authorization": f"Bearer {live_server.token}"}
    with httpx.Client(base_url=live_server.url, timeout=300) as http:
        assert http.post("/admin/adapters/support/export", json={"format": "peft"}).status_code == 401
        refused = http.post("/admin/adapters/support/export", json={"format": "peft", "dtype": "q8_0"}, headers=headers)
        assert refused.status_code == 400 and "does not apply" in refused.json()["error"]["message"]
        done = http.post("/admin/adapters/support/export", json={"format": "peft"}, headers=headers)
        assert done.status_code == 201, done.text
        result = done.json()
        assert "out" not in result and str(live_server.parts.settings.home) not in done.text
        assert result["download"] == f"/admin/exports/{result['id']}.zip"
        assert http.get(result["download"]).status_code == 401
        download = http.get(result["download"], headers=headers)
        assert download.status_code == 200
        assert http.get("/admin/exports/..%2F..%2Fetc.zip", headers=headers).status_code == 404
    archive = tmp_path / "export.zip"
    archive.write_bytes(download.content)
    with zipfile.ZipFile(archive) as bundle:
        names = set(bundle.namelist())
    assert {f"{result['id']}/{f['path']}" for f in result["files"]} == names


def test_ui_adapters_tab_exports_with_progress_and_offers_the_zip(live_server, browser, tmp_path):
    import zipfile

    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(live_server.url)
    page.get_by_role("tab", name="Adapters").click()
    page.locator("#adapters-token input").fill(live_server.token)
    page.get_by_role("button", name="Show adapters").click()
    expect(page.locator("#adapters-table")).to_contain_text("legal", timeout=30_000)
    page.get_by_text("Export for transformers, vLLM, llama.cpp or Ollama").click()
    page.locator("#export-format input").click()
    page.get_by_role("option", name="peft").click()
    page.get_by_role("button", name="Export", exact=True).click()
    expect(page.locator("#export-status")).to_contain_text("Exported legal v1 as peft", timeout=60_000)
    expect(page.locator("#export-status")).to_contain_text("--enable-lora --lora-modules legal=legal-v1-peft")
    with page.expect_download() as info:
        page.locator("#export-file a").first.click()
    archive = tmp_path / "download.zip"
    info.value.save_as(archive)
    page.close()
    with zipfile.ZipFile(archive) as bundle:
        assert "legal-v1-peft/adapter_model.safetensors" in bundle.namelist()


@pytest.mark.parametrize("architecture", ["qwen2", "llama-untied"])
def test_gguf_tensors_of_qwen2_and_an_untied_llama_map_back(architecture):
    """Tiny random models: every tensor gets a GGUF name, and transformers' GGUF code maps each back exactly.

    (Read back whole by transformers' GGUF loader, both give logits equal to the original's; that round
    trip costs ~30 s a model here, so the test checks the tensors.)
    """
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from training.artifacts.gguf import gguf_arch, model_tensors

    shape = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=128)
    if architecture == "qwen2":
        config = Qwen2Config(architectures=["Qwen2ForCausalLM"], tie_word_embeddings=True, **shape)
    else:
        config = LlamaConfig(architectures=["LlamaForCausalLM"], tie_word_embeddings=False, **shape)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    arch = gguf_arch(config)
    tensors = dict(model_tensors(model, arch))
    processor = LlamaTensorProcessor({"num_attention_heads": 4, "num_key_value_heads": 2})
    weights = model.state_dict()
    for name, hf_name in (("blk.1.attn_q.weight", "model.layers.1.self_attn.q_proj.weight"),
                          ("blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj.weight")):
        stored = tensors[name] if arch == "QWEN2" else processor.process(tensors[name], name).weights
        np.testing.assert_array_equal(stored, weights[hf_name].numpy())
    assert ("output.weight" in tensors) == (architecture == "llama-untied")
    assert ("blk.0.attn_q.bias" in tensors) == (architecture == "qwen2")
    assert len(tensors) == len(weights) - (1 if config.tie_word_embeddings else 0)
