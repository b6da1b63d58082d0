"""Slot LoRA (engine.lora): the serving path must compute exactly what PEFT computes, per row."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from core.errors import InvalidAdapterError
from engine.lora import AdapterSlots
from training.random_adapter import make_random_adapter

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def tiny():
    """A two-layer Llama in full precision: PEFT and the slots see identical weights and no 4-bit rounding."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def folders(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-loras")
    return {
        "wide": make_random_adapter(tiny.config, root / "wide", seed=1, rank=4, targets=ALL_PROJECTIONS),
        "narrow": make_random_adapter(tiny.config, root / "narrow", seed=2, rank=8, targets=("q_proj", "v_proj")),
        "other": make_random_adapter(tiny.config, root / "other", seed=3, rank=2, targets=("v_proj",)),
    }


@pytest.fixture(scope="module")
def peft_mixed(tiny, folders):
    """PEFT's own mixed-adapter model, the reference: ``wide`` and ``narrow`` loaded, rows chosen by ``adapter_names``."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(copy.deepcopy(tiny), str(folders["wide"]), adapter_name="wide")
    model.load_adapter(str(folders["narrow"]), adapter_name="narrow")
    return model.eval()


def logits(model, ids, **kwargs) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids, **kwargs).logits


def loaded_slots(tiny, folders, *names: str) -> AdapterSlots:
    """Slots on a fresh copy of the tiny model, filled with ``names`` in that order (slot 0 first)."""
    slots = AdapterSlots(copy.deepcopy(tiny))
    with torch.no_grad():
        for name in names:
            slots.load(name, folders[name])
    return slots


def test_mixed_rows_match_peft(tiny, folders, peft_mixed):
    slots = loaded_slots(tiny, folders, "wide", "narrow")
    model = slots.model
    ids = torch.randint(0, 96, (4, 9))
    rows = ["narrow", None, "wide", "narrow"]
    expected = logits(peft_mixed, ids, adapter_names=[r or "__base__" for r in rows])
    with slots.assign(rows):
        got = logits(model, ids)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(expected[0], expected[2], atol=1e-2)  # the adapters really differ
    assert torch.equal(logits(model, ids), logits(tiny, ids))  # outside an assignment: the base, exactly


def test_a_pass_reads_only_the_slots_its_rows_use(tiny, folders, peft_mixed):
    """Rows on slots 0 and 2 of three: the pass gathers those two, skips the one between, and matches PEFT."""
    slots = loaded_slots(tiny, folders, "wide", "other", "narrow")
    model = slots.model
    assert [slots.slots[n] for n in ("wide", "other", "narrow")] == [0, 1, 2]
    ids = torch.randint(0, 96, (3, 6))
    rows = ["narrow", None, "wide"]
    with slots.assign(rows):
        got = logits(model, ids)
    assert torch.allclose(got, logits(peft_mixed, ids, adapter_names=[r or "__base__" for r in rows]), atol=1e-5)
    down, up = slots.layers["model.layers.0.self_attn.q_proj"].active
    assert down.shape[1] == up.shape[0] == 2 * slots.rank  # two slots, not three


def test_a_reused_slot_keeps_nothing_of_its_last_adapter(tiny, folders):
    model = copy.deepcopy(tiny)
    slots = AdapterSlots(model)
    fresh = AdapterSlots(copy.deepcopy(tiny))
    with torch.no_grad():
        slots.load("wide", folders["wide"])
        slots.unload("wide")
        slots.load("other", folders["other"])  # takes the freed slot; targets v_proj only
        fresh.load("other", folders["other"])
    assert slots.slots["other"] == 0 and slots.capacity == 1
    ids = torch.randint(0, 96, (2, 5))
    with slots.assign(["other", None]):
        got = logits(model, ids)
    with fresh.assign(["other", None]):
        expected = logits(fresh.model, ids)
    assert torch.allclose(got, expected, atol=1e-6)


def test_an_adapter_that_does_not_fit_is_refused_before_any_slot_changes(tiny, folders, tmp_path):
    wider = tiny.config.__class__(**{**tiny.config.to_dict(), "hidden_size": 48})
    misfit = make_random_adapter(wider, tmp_path / "misfit", seed=4, rank=2, targets=("q_proj", "v_proj"))
    model = copy.deepcopy(tiny)
    slots = AdapterSlots(model)
    ids = torch.randint(0, 96, (1, 5))
    with torch.no_grad():
        slots.load("wide", folders["wide"])
        slots.unload("wide")  # its slot is free: the refused adapter would take it
        slots.load("other", folders["other"])
        with slots.assign(["other"]):
            before = logits(model, ids)
        factors = [(layer.lora_A.clone(), layer.lora_B.clone()) for layer in slots.layers.values()]
        with pytest.raises(InvalidAdapterError, match="do not fit"):
            slots.load("misfit", misfit)
    assert slots.keys == ["other"]
    for (lora_a, lora_b), layer in zip(factors, slots.layers.values()):
        assert torch.equal(layer.lora_A, lora_a) and torch.equal(layer.lora_B, lora_b)
    with slots.assign(["other"]):
        assert torch.equal(logits(model, ids), before)


def test_an_adapter_with_an_infinite_factor_is_refused_and_other_rows_stay_finite(tiny, folders, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "infinite"
    shutil.copytree(folders["other"], broken)
    weights = broken / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    name = next(n for n in sorted(tensors) if "lora_B" in n)
    tensors[name][0, 0] = float("inf")
    save_file(tensors, str(weights))
    model = copy.deepcopy(tiny)
    slots = AdapterSlots(model)
    with torch.no_grad():
        slots.load("wide", folders["wide"])
        with pytest.raises(InvalidAdapterError, match="NaN or infinite"):
            slots.load("infinite", broken)
        slots.load("narrow", folders["narrow"])
    assert slots.keys == ["wide", "narrow"]
    with slots.assign(["wide", None, "narrow"]):
        assert torch.isfinite(logits(model, torch.randint(0, 96, (3, 5)))).all()


def test_a_truncated_weights_file_is_refused_clearly_and_changes_no_slot(tiny, folders, tmp_path):
    """Its header is whole (what validation reads at install), its tensors are not: the load fails as the adapter's error."""
    import shutil

    truncated = tmp_path / "truncated"
    shutil.copytree(folders["other"], truncated)
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16])
    slots = AdapterSlots(copy.deepcopy(tiny))
    with torch.no_grad():
        slots.load("wide", folders["wide"])
        with pytest.raises(InvalidAdapterError, match="not a readable PEFT LoRA folder"):
            slots.load("truncated", truncated)
    assert slots.keys == ["wide"] and slots.capacity == 1


def test_unsupported_adapters_are_refused_clearly(tiny, folders, tmp_path):
    import shutil

    dora = tmp_path / "dora"
    shutil.copytree(folders["other"], dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    slots = AdapterSlots(copy.deepcopy(tiny))
    with pytest.raises(InvalidAdapterError, match="DoRA is not supported"):
        slots.load("dora", dora)
    assert slots.keys == []


def test_bfloat16_slots_hold_an_adapter_in_half_the_bytes_and_compute_nearly_what_peft_does(tiny, folders):
    from peft import PeftModel

    peft = PeftModel.from_pretrained(copy.deepcopy(tiny), str(folders["wide"]), adapter_name="wide").eval()
    full, half = AdapterSlots(copy.deepcopy(tiny)), AdapterSlots(copy.deepcopy(tiny), storage_dtype=torch.bfloat16)
    with torch.no_grad():
        for slots in (full, half):
            slots.load("wide", folders["wide"])
    nbytes = [sum(layer.lora_A.nbytes + layer.lora_B.nbytes for layer in s.layers.values()) for s in (full, half)]
    assert nbytes[1] * 2 == nbytes[0] > 0
    ids = torch.randint(0, 96, (2, 7))
    expected = logits(peft, ids)
    with half.assign(["wide", "wide"]):
        got = logits(half.model, ids)
    assert got.dtype == torch.float32  # the update is computed in the model's dtype
    assert not torch.allclose(expected, logits(tiny, ids), atol=1e-2)  # the adapter matters at this scale
    assert torch.allclose(got, expected, atol=2e-2) and (got - expected).abs().max() < 1e-2 * expected.abs().max()


def test_gathered_bfloat16_factors_follow_a_slot_that_changes_adapter(tiny, folders):
    """The running batch's gathered, widened copy is reused between passes, never after its slot took another adapter."""
    slots = AdapterSlots(copy.deepcopy(tiny), storage_dtype=torch.bfloat16)
    fresh = AdapterSlots(copy.deepcopy(tiny), storage_dtype=torch.bfloat16)
    ids = torch.randint(0, 96, (2, 5))
    with torch.no_grad():
        slots.load("wide", folders["wide"])
        fresh.load("other", folders["other"])
    with slots.assign(["wide", "wide"]):
        first = logits(slots.model, ids)
        assert torch.equal(logits(slots.model, ids), first)  # the second pass reuses the gathered copy
    with torch.no_grad():
        slots.unload("wide")
        slots.load("other", folders["other"])  # the same slot, other factors
    with slots.assign(["other", "other"]):
        got = logits(slots.model, ids)
    with fresh.assign(["other", "other"]):
        expected = logits(fresh.model, ids)
    assert torch.allclose(got, expected, atol=1e-6) and not torch.allclose(got, first, atol=1e-3)


def test_passes_a_gathered_set_covers_reuse_it_and_compute_what_peft_does(tiny, folders, peft_mixed):
    """A prefill gathers its rows' slots with the running batch's; narrower passes reuse that set until it shrinks."""
    slots = loaded_slots(tiny, folders, "wide", "narrow")
    model = slots.model
    ids = torch.randint(0, 96, (2, 6))
    with slots.assign(["narrow", None], also=["wide"]):  # a prefill while a "wide" row decodes
        logits(model, ids)
    assert slots.gathers == 1
    q_proj = slots.layers["model.layers.0.self_attn.q_proj"]
    gathered = q_proj.active
    assert gathered[0].shape[1] == 2 * slots.rank  # both slots
    for _ in range(AdapterSlots.SHRINK_AFTER):  # narrower passes: the surplus slot is masked out, nothing gathered
        with slots.assign(["narrow", "narrow"]):
            got = logits(model, ids)
        assert q_proj.active is gathered
    assert slots.gathers == 1
    assert torch.allclose(got, logits(peft_mixed, ids, adapter_names=["narrow", "narrow"]), atol=1e-5)
    with slots.assign(["narrow", None]):  # one narrower pass too many: just the used slot is gathered
        logits(model, ids)
    assert slots.gathers == 2 and q_proj.active[0].shape[1] == slots.rank


def test_a_gathered_set_outlives_loads_into_slots_no_pass_uses(tiny, folders):
    """Refilling a gathered but unused slot keeps the set; a row of the new adapter gathers anew and gets its factors."""
    model = copy.deepcopy(tiny)
    slots = AdapterSlots(model, storage_dtype=torch.bfloat16)  # gathered copies, not views of the slots
    reference = AdapterSlots(copy.deepcopy(tiny), storage_dtype=torch.bfloat16)
    ids = torch.randint(0, 96, (2, 6))
    with torch.no_grad():
        for adapters in (slots, reference):  # "narrow" has the widest rank and "wide" every layer: no later resize
            adapters.load("narrow", folders["narrow"])
            adapters.load("wide", folders["wide"])
    with slots.assign(["narrow", "wide"]):
        logits(model, ids)
    with torch.no_grad():
        for adapters in (slots, reference):
            adapters.unload("wide")
            adapters.load("other", folders["other"])  # into the slot "wide" left, which the gathered set holds
    for rows in (["narrow", "narrow"], ["other", "narrow"]):
        with slots.assign(rows):
            got = logits(model, ids)
        with reference.assign(rows):
            expected = logits(reference.model, ids)
        assert torch.allclose(got, expected, atol=1e-6)  # a surplus slot changes only the summation order
        assert slots.gathers == (1 if "other" not in rows else 2)  # the refilled slot is masked out until a row uses it


def test_layers_of_one_shape_with_different_ranks_match_peft(tiny, tmp_path):
    """q_proj and o_proj share a bank (both 32 -> 32 here); a rank_pattern gives them ranks 2 and 6."""
    from peft import LoraConfig, PeftModel, get_peft_model

    config = LoraConfig(
        r=6, lora_alpha=12, rank_pattern={"q_proj": 2}, alpha_pattern={"o_proj": 3}, target_modules=["q_proj", "o_proj"],
        init_lora_weights=False,
    )
    torch.manual_seed(5)
    get_peft_model(copy.deepcopy(tiny), config).save_pretrained(tmp_path / "patterned")
    peft = PeftModel.from_pretrained(copy.deepcopy(tiny), str(tmp_path / "patterned")).eval()
    slots = AdapterSlots(copy.deepcopy(tiny))
    with torch.no_grad():
        slots.load("patterned", tmp_path / "patterned")
    assert len(slots.banks) == 1 and slots.rank == 6
    ids = torch.randint(0, 96, (2, 7))
    with slots.assign(["patterned", "patterned"]):
        got = logits(slots.model, ids)
    assert torch.allclose(got, logits(peft, ids), atol=1e-5)
