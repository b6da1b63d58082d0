"""Many LoRA adapters in one forward pass: resident adapters live in slots of stacked tensors.

This is the serving side of a mixed-adapter batch (as in Punica and S-LoRA).
Each adapted linear layer of the base is wrapped once by a :class:`SlotLinear`
that holds the factors of every resident adapter: ``A`` of shape
(slots, rank, in) and ``B`` of shape (slots, rank, out), the adapter's scaling
folded into ``B`` and smaller ranks zero-padded. A pass computes, for all rows
at once, ``x @ A`` over the slots the batch uses, keeps each row's own slot
with a 0/1 mask shared by every layer, and adds the product with ``B``: two
matrix products per layer however many adapters the batch mixes. Their cost is
the factors' bytes, so a pass reads only the slots its rows use, gathered once
per batch composition, not every resident adapter nor the run of slots between
the first and the last one used. (PEFT's
``adapter_names`` path runs a gather and a product pair per adapter per layer,
which on a CPU costs more than the 4-bit base itself.) Loading an adapter copies
its tensors into a free slot; nothing is allocated per request.

Served adapters are plain LoRA on linear layers, which is what
``training.finetune`` produces; DoRA, LoRA on embeddings, trained biases and
``modules_to_save`` are refused with a clear error.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from bot.errors import InvalidAdapterError

PEFT_PREFIX = "base_model.model."
FACTOR = re.compile(r"^(?P<module>.+)\.lora_(?P<factor>[AB])\.weight$")


class SlotLinear(nn.Module):
    """A base linear layer plus the LoRA factors of every slot; adds each row's own adapter update."""

    def __init__(self, base_layer: nn.Module, owner: AdapterSlots) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.owner = owner
        storage = {"dtype": owner.storage_dtype, "device": owner.device}
        self.register_buffer("lora_A", torch.zeros(0, 0, self.in_features, **storage))
        self.register_buffer("lora_B", torch.zeros(0, 0, self.out_features, **storage))
        # The slots the running batch uses, gathered side by side in the compute dtype: kept between decoding
        # steps, counted with the buffers, rebuilt when the batch's slots or any slot's factors change.
        self.register_buffer("active_A", torch.zeros(0, 0), persistent=False)
        self.register_buffer("active_B", torch.zeros(0, 0), persistent=False)
        self._active_key: tuple | None = None
        self._views()

    def _views(self) -> None:
        """All slots side by side: ``down`` is (in, slots*rank), ``up`` is (slots*rank, out); a pass slices columns."""
        self.down = self.lora_A.view(-1, self.in_features).t()
        self.up = self.lora_B.view(-1, self.out_features)

    def resize(self, slots: int, rank: int) -> None:
        """Grow the slot tensors, keeping what they hold."""
        old_slots, old_rank = self.lora_A.shape[:2]
        if (slots, rank) == (old_slots, old_rank):
            return
        lora_a = self.lora_A.new_zeros(slots, rank, self.in_features)
        lora_b = self.lora_B.new_zeros(slots, rank, self.out_features)
        lora_a[:old_slots, :old_rank] = self.lora_A
        lora_b[:old_slots, :old_rank] = self.lora_B
        self.lora_A, self.lora_B = lora_a, lora_b
        self._views()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        assignment = self.owner.assignment
        if assignment is None:
            return out
        lora_a, lora_b = self._factors(assignment.slots, out.dtype)
        down = torch.mm(x.reshape(-1, self.in_features).to(out.dtype), lora_a)
        down.mul_(assignment.mask_for(down.shape[0]))
        out = out.contiguous()
        out.view(-1, self.out_features).addmm_(down, lora_b)
        return out

    def _factors(self, slots: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The factors of ``slots`` side by side in ``dtype``: views of a run of stored slots, else a gathered copy."""
        rank = self.lora_A.shape[1]
        low, high = slots[0] * rank, (slots[-1] + 1) * rank
        if self.lora_A.dtype == dtype and high - low == len(slots) * rank:
            return self.down[:, low:high], self.up[low:high]
        key = (slots, dtype, self.owner.epoch)
        if self._active_key != key:  # checked first: a decoding step's passes reuse the slots of the one before
            index = torch.tensor(slots, device=self.lora_A.device)
            self.active_A = self.lora_A[index].view(-1, self.in_features).t().to(dtype)
            self.active_B = self.lora_B[index].view(-1, self.out_features).to(dtype)
            self._active_key = key
        return self.active_A, self.active_B


class SlotAssignment:
    """Which slot each row of one forward pass uses, as the slots used (ascending) and the 0/1 mask the layers apply."""

    def __init__(self, slots: list[int | None], rank: int, device: torch.device, dtype: torch.dtype) -> None:
        self.slots = tuple(sorted({s for s in slots if s is not None}))
        position = {slot: i for i, slot in enumerate(self.slots)}
        mask = torch.zeros(len(slots), len(self.slots) * rank, dtype=dtype)
        for row, slot in enumerate(slots):
            if slot is not None:
                mask[row, position[slot] * rank : (position[slot] + 1) * rank] = 1
        self.mask = mask.to(device)
        self._expanded: dict[int, torch.Tensor] = {}

    def mask_for(self, rows: int) -> torch.Tensor:
        """The mask for ``rows`` flattened (row, position) pairs: each row's mask repeated over its positions."""
        if rows not in self._expanded:
            self._expanded[rows] = self.mask.repeat_interleave(rows // self.mask.shape[0], dim=0)
        return self._expanded[rows]


class AdapterSlots:
    """The adapters resident in one base model, by slot, and the slot assignment of the pass in progress.

    ``storage_dtype`` is what the factors are kept in (default: the compute
    dtype). bfloat16 on a float32 CPU model halves each resident adapter; its
    8-bit mantissa rounds the low-rank update far less than NF4 rounds the base.
    """

    def __init__(self, model: nn.Module, storage_dtype: torch.dtype | None = None) -> None:
        self.model = model
        embeddings = model.get_input_embeddings().weight
        self.dtype = embeddings.dtype if embeddings.is_floating_point() else torch.float32
        self.storage_dtype = storage_dtype or self.dtype
        self.device = embeddings.device
        self.layers: dict[str, SlotLinear] = {}
        self.slots: dict[str, int] = {}  # adapter key -> slot
        self.capacity = 0
        self.rank = 0
        self.epoch = 0  # bumped whenever a slot's factors change: gathered copies of an older epoch are stale
        self._finite: set[Path] = set()  # folders whose factors were checked (a reload skips the check)
        self.assignment: SlotAssignment | None = None

    @property
    def keys(self) -> list[str]:
        return list(self.slots)

    def load(self, key: str, folder: Path) -> None:
        """Copy an adapter's factors into a free slot (growing the slot tensors if none is free).

        Every shape is checked before the slot is touched. The write then covers the whole slot, so
        nothing of the adapter that held it before survives: factors where this adapter has them
        (converted and scaled in the copy), zeros in the layers and rank rows where it has none.
        An evicted adapter's reload is this copy and nothing more (no separate clearing pass).
        """
        config, factors = read_adapter(Path(folder))
        self._check_finite(Path(folder), factors)
        pairs = {module: (factors[(module, "A")], factors[(module, "B")]) for module, _ in factors}
        for module, (lora_a, lora_b) in pairs.items():
            layer, r = self._layer(module), lora_a.shape[0]
            if lora_a.shape != (r, layer.in_features) or lora_b.shape != (layer.out_features, r):
                raise InvalidAdapterError(
                    f"{folder}: LoRA factors of {module} have shapes {list(lora_a.shape)} and {list(lora_b.shape)}, "
                    f"which do not fit its {layer.in_features}->{layer.out_features} layer"
                )
        rank = max(lora_a.shape[0] for lora_a, _ in pairs.values())
        slot = next((s for s in range(self.capacity) if s not in self.slots.values()), self.capacity)
        self._resize(max(self.capacity, slot + 1), max(self.rank, rank))
        for module, layer in self.layers.items():
            lora_a, lora_b = pairs.get(module, (None, None))
            r = 0 if lora_a is None else lora_a.shape[0]
            if r:
                layer.lora_A[slot, :r].copy_(lora_a)
                layer.lora_B[slot, :r].copy_(lora_b.t() * scaling(config, module, r))
            if r < self.rank:
                layer.lora_A[slot, r:].zero_()
                layer.lora_B[slot, r:].zero_()
        self.slots[key] = slot
        self.epoch += 1

    def _check_finite(self, folder: Path, factors: dict[tuple[str, str], torch.Tensor]) -> None:
        """Refuse NaN or infinite factors: the 0/1 row mask multiplies every slot a pass uses, and
        0 x inf is NaN, so one such value would corrupt other adapters' rows. Checked once per folder
        (about 2 ms in one pass over all factors); a version's folder does not change."""
        if folder in self._finite:
            return
        if not bool(torch.isfinite(torch.cat([t.reshape(-1).float() for t in factors.values()])).all()):
            bad = next(f"{module}.lora_{factor}" for (module, factor), t in factors.items() if not torch.isfinite(t).all())
            raise InvalidAdapterError(f"{folder}: the LoRA factors of {bad} hold NaN or infinite values")
        self._finite.add(folder)

    def unload(self, key: str) -> None:
        """Free the adapter's slot; its factors stay until the next load overwrites the whole slot."""
        self.slots.pop(key, None)

    @contextmanager
    def assign(self, adapters: list[str | None]):
        """Within this block, forward passes give row ``i`` the adapter ``adapters[i]`` (None: the base alone)."""
        slots = [None if a is None else self.slots[a] for a in adapters]
        used = any(s is not None for s in slots)
        self.assignment = SlotAssignment(slots, self.rank, self.device, self.dtype) if used else None
        try:
            yield
        finally:
            self.assignment = None

    def _layer(self, module: str) -> SlotLinear:
        """The slot layer wrapping ``module`` of the base, wrapping it on first use."""
        if module in self.layers:
            return self.layers[module]
        parent_name, _, child_name = module.rpartition(".")
        try:
            parent = self.model.get_submodule(parent_name)
            base_layer = getattr(parent, child_name)
        except AttributeError:
            raise InvalidAdapterError(f"the adapter targets {module}, which the base model does not have") from None
        if not all(hasattr(base_layer, f) for f in ("in_features", "out_features")):
            raise InvalidAdapterError(f"the adapter targets {module}, which is not a linear layer")
        layer = SlotLinear(base_layer, self)
        layer.resize(self.capacity, self.rank)
        setattr(parent, child_name, layer)
        self.layers[module] = layer
        return layer

    def _resize(self, capacity: int, rank: int) -> None:
        if (capacity, rank) == (self.capacity, self.rank):
            return
        self.epoch += 1
        for layer in self.layers.values():
            layer.resize(capacity, rank)
        self.capacity, self.rank = capacity, rank


def scaling(config: dict, module: str, rank: int) -> float:
    """PEFT's scaling of one module: alpha (or its alpha_pattern entry) over the rank, or its square root (rsLoRA)."""
    alpha = config.get("lora_alpha", 8)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = value
            break
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def read_adapter(folder: Path) -> tuple[dict, dict[tuple[str, str], torch.Tensor]]:
    """A PEFT LoRA folder's config and its factors by (module, "A" | "B"); refuses what serving cannot apply."""
    from safetensors.torch import load_file

    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        tensors = load_file(str(folder / "adapter_model.safetensors"))
    except (OSError, ValueError) as exc:
        raise InvalidAdapterError(f"{folder}: not a readable PEFT LoRA folder ({exc})") from exc
    unsupported = [
        name
        for name, present in (
            ("DoRA", config.get("use_dora")),
            ("trained biases", config.get("bias", "none") != "none"),
            ("modules_to_save", config.get("modules_to_save")),
            ("fan_in_fan_out layers", config.get("fan_in_fan_out")),
        )
        if present
    ]
    if unsupported:
        raise InvalidAdapterError(
            f"{folder}: serving applies plain LoRA on linear layers; {unsupported[0]} is not supported"
        )
    factors: dict[tuple[str, str], torch.Tensor] = {}
    for name, tensor in tensors.items():
        match = FACTOR.match(name.removeprefix(PEFT_PREFIX))
        if match is None:
            raise InvalidAdapterError(f"{folder}: tensor {name} is not a LoRA factor of a linear layer (not supported)")
        factors[(match["module"], match["factor"])] = tensor
    unpaired = sorted(module for module, factor in factors if (module, "B" if factor == "A" else "A") not in factors)
    if unpaired or not factors:
        raise InvalidAdapterError(f"{folder}: LoRA factors come in A/B pairs; {unpaired[:1] or 'none'} lacks its pair")
    return config, factors
