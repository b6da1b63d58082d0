"""The adapter registry refuses every bad adapter and never half-installs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.registry import Registry
from adapters.validation import AdapterLimits
from core.errors import InvalidAdapterError, NotFoundError


@pytest.fixture(scope="module")
def fingerprint(session_settings):
    from engine.base_model import base_fingerprint

    return base_fingerprint(session_settings)


@pytest.fixture(scope="module")
def good_adapter(make_random_adapter) -> Path:
    return make_random_adapter(seed=1)


@pytest.fixture
def registry(tmp_path, fingerprint) -> Registry:
    return Registry(tmp_path / "adapters", fingerprint)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def copy_adapter(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_install_versions_and_manifest(registry, good_adapter):
    first = registry.install(good_adapter, "support", description="Shop help", examples=["where is my order"])
    second = registry.install(good_adapter, "support")
    assert (first.version, second.version) == (1, 2)
    assert registry.get("support").version == 2
    manifest = registry.get("support", 1)
    assert manifest.rank == 8 and manifest.alpha == 16.0
    assert set(manifest.target_modules) == {"q_proj", "v_proj"}
    assert manifest.fingerprint["architecture"] == "LlamaForCausalLM"
    assert manifest.fingerprint["hidden_size"] == 576 and manifest.fingerprint["num_layers"] == 30
    assert manifest.examples == ["where is my order"]
    assert (Path(manifest.path) / "adapter_model.safetensors").is_file()
    assert manifest.key != registry.get("support").key  # each version loads under its own key


def test_enable_disable_rollback_remove(registry, good_adapter):
    registry.install(good_adapter, "legal")
    registry.install(good_adapter, "legal")
    assert registry.set_status("legal", "disabled").status == "disabled"
    assert not registry.get("legal").enabled
    registry.set_status("legal", "enabled")
    before = registry.revision()
    assert registry.rollback("legal").version == 1
    assert registry.revision() > before
    with pytest.raises(NotFoundError):
        registry.rollback("legal")
    registry.remove("legal")
    with pytest.raises(NotFoundError):
        registry.get("legal")
    assert registry.list() == []


def _drop_weights(folder: Path) -> None:
    (folder / "adapter_model.safetensors").unlink()


def _drop_config(folder: Path) -> None:
    (folder / "adapter_config.json").unlink()


def _pickle_weights(folder: Path) -> None:
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")


def _extra_pickle(folder: Path) -> None:
    (folder / "optimizer.pt").write_bytes(b"\x80\x04K\x01.")


def _corrupt_weights(folder: Path) -> None:
    (folder / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")


def _edit_config(**changes):
    def edit(folder: Path) -> None:
        path = folder / "adapter_config.json"
        config = json.loads(path.read_text())
        config.update(changes)
        path.write_text(json.dumps(config))

    return edit


BAD_ADAPTERS = {
    "missing weights": (_drop_weights, "adapter_model.safetensors: missing"),
    "missing config": (_drop_config, "adapter_config.json: missing"),
    "pickle weights": (_pickle_weights, "adapter_model.bin: pickle weights are refused"),
    "pickle beside": (_extra_pickle, "optimizer.pt: pickle weights are refused"),
    "unreadable safetensors": (_corrupt_weights, "unreadable safetensors"),
    "unknown target": (_edit_config(target_modules=["q_proj", "conv_in"]), "['conv_in'] do not exist"),
    "rank too large": (_edit_config(r=4096), "outside 1..256"),
    "rank zero": (_edit_config(r=0), "outside 1..256"),
    "not json": (lambda f: (f / "adapter_config.json").write_text("{broken"), "not readable JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_ADAPTERS))
def test_bad_adapter_rejected_registry_unchanged(case, registry, good_adapter, tmp_path):
    registry.install(good_adapter, "support")
    before = snapshot(registry.root)
    damage, message = BAD_ADAPTERS[case]
    bad = copy_adapter(good_adapter, tmp_path / "bad")
    damage(bad)
    with pytest.raises(InvalidAdapterError, match=message.replace("[", r"\[").replace("]", r"\]")):
        registry.install(bad, "support")
    assert snapshot(registry.root) == before


def test_adapter_for_another_model_rejected(registry, make_random_adapter, base_model_dir):
    from transformers import AutoConfig

    wider = AutoConfig.from_pretrained(base_model_dir)
    wider.hidden_size, wider.intermediate_size, wider.num_hidden_layers = 640, 256, 2
    other = make_random_adapter(seed=2, model_config=wider)
    with pytest.raises(InvalidAdapterError, match=r"does not fit .* \(an adapter trained for another model\?\)"):
        registry.install(other, "support")
    assert registry.names() == []


def test_size_cap(tmp_path, fingerprint, good_adapter):
    registry = Registry(tmp_path / "adapters", fingerprint, AdapterLimits(max_bytes=1000))
    with pytest.raises(InvalidAdapterError, match="over the cap"):
        registry.install(good_adapter, "support")


@pytest.mark.parametrize("name", ["../evil", "Support", "a/b", "", ".hidden", "auto", "base", "x" * 65, "名字"])
def test_names_cannot_escape(registry, good_adapter, name):
    with pytest.raises(InvalidAdapterError):
        registry.install(good_adapter, name)
    assert not any(registry.root.parent.glob("evil"))
    assert registry.names() == []


def test_interrupted_install_leaves_nothing(tmp_path, fingerprint, good_adapter):
    """A process killed in the middle of an install (here: after staging) leaves the registry as it was."""
    root = tmp_path / "adapters"
    Registry(root, fingerprint).install(good_adapter, "support")
    before = snapshot(root)
    script = (
        "import os, sys, adapters.registry as r\n"
        "from adapters.manifest import BaseFingerprint\n"
        "import json\n"
        "real = r.write_json_atomic\n"
        "def die(*a, **k): os._exit(9)\n"
        "r.write_json_atomic = die\n"  # the process dies exactly between the rename and the state switch
        f"fp = BaseFingerprint.from_dict(json.loads({json.dumps(json.dumps(fingerprint.to_dict()))}))\n"
        f"r.Registry({str(root)!r}, fp).install({str(good_adapter)!r}, 'support')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1], capture_output=True)
    assert result.returncode == 9
    registry = Registry(root, fingerprint)
    assert registry.get("support").version == 1
    after = {k: v for k, v in snapshot(root).items() if not k.startswith(("support/v2", ".staging"))}
    assert after == before
    assert registry.install(good_adapter, "support").version >= 2
