"""Many LoRA adapters in one forward pass: resident adapters live in slots of stacked tensors.

This is the serving side of a mixed-adapter batch (as in Punica and S-LoRA).
Each adapted linear layer of the base is wrapped once by a :class:`SlotLinear`
that holds the factors of every resident adapter: ``A`` of shape
(slots, rank, in) and ``B`` of shape (slots, rank, out), the adapter's scaling
folded into ``B`` and smaller ranks zero-padded. A pass computes, for all rows
at once, ``x @ A`` over the slots the batch uses, keeps each row's own slot
with a 0/1 mask shared by every layer, and adds the product with ``B``: two
matrix products per layer however many adapters the batch mixes. Their cost is
the factors' bytes, so a pass reads only the slots its rows use, not every
resident adapter nor the run of slots between the first and the last one used.
(PEFT's ``adapter_names`` path runs a gather and a product pair per adapter per
layer, which on a CPU costs more than the 4-bit base itself.)

The layers' factors are views into one :class:`SlotBank` per layer shape (all
q_proj of a model, all gate_proj, ...), so the slots a batch uses are gathered,
and widened to the compute dtype, in one copy per bank: a few ops, not two per
layer. A gathered set is reused by every pass it covers (the surplus slots
masked out), so prefills, closed-loop clients and rows that leave do not each
cost a gather (:meth:`AdapterSlots._gather`). Loading an adapter copies its
tensors into a free slot; nothing is allocated per request.

Served adapters are plain LoRA on linear layers, which is what
``training.finetune`` produces; DoRA, LoRA on embeddings, trained biases and
``modules_to_save`` are refused with a clear error.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from adapters.validation import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    check_config,
    check_factors,
    first_non_finite,
    lora_pairs,
    pattern_value,
)
from core.errors import InvalidAdapterError


class SlotLinear(nn.Module):
    """A base linear layer plus the LoRA factors of every slot; adds each row's own adapter update."""

    def __init__(self, base_layer: nn.Module, owner: AdapterSlots) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.owner = owner
        # Views into this layer's block of its bank, set by SlotBank; buffers, so they count as the model's memory.
        self.register_buffer("lora_A", torch.zeros(0, 0, self.in_features))
        self.register_buffer("lora_B", torch.zeros(0, 0, self.out_features))
        # The slots the running batch uses, side by side in the compute dtype: ``down`` (in, slots*rank) and
        # ``up`` (slots*rank, out). Set by SlotBank.activate before a pass; a plain attribute, read on every call.
        self.active: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        assignment = self.owner.assignment
        if assignment is None:
            return out
        down, up = self.active
        rows = x.reshape(-1, self.in_features)
        product = torch.mm(rows if rows.dtype == down.dtype else rows.to(down.dtype), down)
        product.mul_(assignment.mask_for(product.shape[0]))
        out = out.contiguous()
        out.view(-1, self.out_features).addmm_(product, up)
        return out


class SlotBank:
    """The slots of every adapted layer of one shape, stacked as ``A`` (layers, slots, rank, in) and ``B``
    (layers, slots, rank, out): one gather serves all of them."""

    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype, device: torch.device) -> None:
        self.modules: list[str] = []
        self.layers: list[SlotLinear] = []
        self.A = torch.zeros(0, 0, 0, in_features, dtype=dtype, device=device)
        self.B = torch.zeros(0, 0, 0, out_features, dtype=dtype, device=device)

    def add(self, module: str, layer: SlotLinear) -> None:
        self.modules.append(module)
        self.layers.append(layer)
        self._grow(len(self.layers), *self.A.shape[1:3])

    def resize(self, slots: int, rank: int) -> None:
        """Grow the slots and ranks of every layer, keeping what they hold."""
        if (slots, rank) != tuple(self.A.shape[1:3]):
            self._grow(len(self.layers), slots, rank)

    def _grow(self, layers: int, slots: int, rank: int) -> None:
        old_layers, old_slots, old_rank = self.A.shape[:3]
        lora_a = self.A.new_zeros(layers, slots, rank, self.A.shape[3])
        lora_b = self.B.new_zeros(layers, slots, rank, self.B.shape[3])
        lora_a[:old_layers, :old_slots, :old_rank] = self.A
        lora_b[:old_layers, :old_slots, :old_rank] = self.B
        self.A, self.B = lora_a, lora_b
        for i, layer in enumerate(self.layers):
            layer.lora_A, layer.lora_B = lora_a[i], lora_b[i]

    def write(self, slot: int, factors: list[tuple[torch.Tensor, torch.Tensor, float] | None]) -> None:
        """Fill ``slot`` of every layer: ``factors[i]`` (A, B and B's scaling) where an adapter has them, zeros
        elsewhere. A few copies per rank in use, not one per layer: an evicted adapter's reload is this write."""
        self.A[:, slot].zero_()
        self.B[:, slot].zero_()
        by_rank: dict[int, list[int]] = {}
        for i, factor in enumerate(factors):
            if factor is not None:
                by_rank.setdefault(factor[0].shape[0], []).append(i)
        for r, layers in by_rank.items():
            index = torch.tensor(layers, device=self.A.device)
            lora_b = torch.stack([factors[i][1] for i in layers])
            scales = torch.tensor([factors[i][2] for i in layers], dtype=lora_b.dtype)
            self.A[index, slot, :r] = torch.stack([factors[i][0] for i in layers]).to(self.A)
            self.B[index, slot, :r] = (lora_b * scales[:, None, None]).transpose(1, 2).to(self.B)

    def activate(self, slots: tuple[int, ...], dtype: torch.dtype) -> None:
        """Give every layer the factors of ``slots`` in ``dtype``: views of a run of stored slots, else a copy."""
        if self.A.dtype == dtype and slots[-1] + 1 - slots[0] == len(slots):
            lora_a, lora_b = self.A[:, slots[0] : slots[-1] + 1], self.B[:, slots[0] : slots[-1] + 1]
        else:
            index = torch.tensor(slots, device=self.A.device)
            lora_a, lora_b = self.A.index_select(1, index).to(dtype), self.B.index_select(1, index).to(dtype)
        for i, layer in enumerate(self.layers):
            layer.active = (lora_a[i].view(-1, self.A.shape[3]).t(), lora_b[i].view(-1, self.B.shape[3]))


class SlotAssignment:
    """Which slot each row of one forward pass uses, as the 0/1 mask over the gathered slots the layers apply."""

    def __init__(
        self, slots: list[int | None], gathered: tuple[int, ...], rank: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        position = {slot: i for i, slot in enumerate(gathered)}
        mask = torch.zeros(len(slots), len(gathered) * rank, dtype=dtype)
        for row, slot in enumerate(slots):
            if slot is not None:
                mask[row, position[slot] * rank : (position[slot] + 1) * rank] = 1
        self.mask = mask.to(device)
        self._expanded: dict[int, torch.Tensor] = {len(slots): self.mask}

    def mask_for(self, rows: int) -> torch.Tensor:
        """The mask for ``rows`` flattened (row, position) pairs: each row's mask repeated over its positions."""
        mask = self._expanded.get(rows)
        if mask is None:
            mask = self._expanded[rows] = self.mask.repeat_interleave(rows // self.mask.shape[0], dim=0)
        return mask


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
        self.banks: dict[tuple[int, int], SlotBank] = {}  # by (in, out) features
        self.slots: dict[str, int] = {}  # adapter key -> slot
        self.capacity = 0
        self.rank = 0
        self.epoch = 0  # bumped when layers or slot shapes change: every gathered copy is stale
        self._versions: dict[int, int] = {}  # per slot, bumped when an adapter is copied into it
        self._gathered: dict[int, int] = {}  # the slots the layers' factors now hold, with the versions they hold
        self._gathered_epoch = -1
        self._narrower = 0  # passes in a row that used fewer slots than are gathered
        self.gathers = 0
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
                    f"{WEIGHTS_FILE}: LoRA factors of {module} have shapes {list(lora_a.shape)} and {list(lora_b.shape)}, "
                    f"which do not fit its {layer.in_features}->{layer.out_features} layer"
                )
        rank = max(lora_a.shape[0] for lora_a, _ in pairs.values())
        slot = next((s for s in range(self.capacity) if s not in self.slots.values()), self.capacity)
        self._resize(max(self.capacity, slot + 1), max(self.rank, rank))
        scaled = {m: (a, b, scaling(config, m, a.shape[0])) for m, (a, b) in pairs.items()}
        for bank in self.banks.values():
            bank.write(slot, [scaled.get(module) for module in bank.modules])
        self.slots[key] = slot
        self._versions[slot] = self._versions.get(slot, 0) + 1

    def _check_finite(self, folder: Path, factors: dict[tuple[str, str], torch.Tensor]) -> None:
        """Refuse NaN or infinite factors: the 0/1 row mask multiplies every slot a pass uses, and
        0 x inf is NaN, so one such value would corrupt other adapters' rows. Checked once per folder
        (about 2 ms in one pass over all factors); a version's folder does not change."""
        if folder in self._finite:
            return
        bad = first_non_finite({f"{module}.lora_{factor}": t for (module, factor), t in factors.items()})
        if bad is not None:
            raise InvalidAdapterError(f"{WEIGHTS_FILE}: tensor {bad} holds NaN or infinite values")
        self._finite.add(folder)

    def unload(self, key: str) -> None:
        """Free the adapter's slot; its factors stay until the next load overwrites the whole slot."""
        self.slots.pop(key, None)

    @contextmanager
    def assign(self, adapters: list[str | None], also: list[str | None] = ()):
        """Within this block, forward passes give row ``i`` the adapter ``adapters[i]`` (None: the base alone).

        ``also`` names adapters the next passes will carry besides these (a prefill's running batch), so
        the slots gathered for this pass serve them too.
        """
        slots = [None if a is None else self.slots[a] for a in adapters]
        needed = {s for s in slots if s is not None}
        self.assignment = None
        if needed:
            gathered = self._gather(needed | {self.slots[a] for a in also if a is not None})
            self.assignment = SlotAssignment(slots, gathered, self.rank, self.device, self.dtype)
        try:
            yield
        finally:
            self.assignment = None

    SHRINK_AFTER = 16

    def _gather(self, needed: set[int]) -> tuple[int, ...]:
        """The slots the layers' factors hold for the next pass, gathering them anew only when needed.

        A gather copies every used slot of every layer (about 13 ms for SmolLM2 with four adapters),
        while a slot gathered but unused costs each step a fraction of a millisecond. So a pass whose
        slots the gathered set covers reuses it, the surplus masked out (a slot refilled since holds
        finite factors times zero): the next request of a closed loop, a row that is prefilled while
        others decode, the batch after a row left. Only after ``SHRINK_AFTER`` narrower passes in a row,
        when the surplus has cost about one gather, are just the used slots gathered.
        """
        current = self._gathered
        fresh = self._gathered_epoch == self.epoch and all(current.get(s) == self._versions[s] for s in needed)
        if fresh and len(needed) == len(current):
            self._narrower = 0
            return tuple(current)
        if fresh and self._narrower < self.SHRINK_AFTER:
            self._narrower += 1
            return tuple(current)
        slots = tuple(sorted(needed))
        for bank in self.banks.values():
            bank.activate(slots, self.dtype)
        self._gathered = {s: self._versions[s] for s in slots}
        self._gathered_epoch, self._narrower = self.epoch, 0
        self.gathers += 1
        return slots

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
        shape = (layer.in_features, layer.out_features)
        if shape not in self.banks:
            self.banks[shape] = SlotBank(*shape, dtype=self.storage_dtype, device=self.device)
            self.banks[shape].resize(self.capacity, self.rank)
        self.banks[shape].add(module, layer)
        setattr(parent, child_name, layer)
        self.layers[module] = layer
        self.epoch += 1
        return layer

    def _resize(self, capacity: int, rank: int) -> None:
        if (capacity, rank) == (self.capacity, self.rank):
            return
        self.epoch += 1
        for bank in self.banks.values():
            bank.resize(capacity, rank)
        self.capacity, self.rank = capacity, rank


def scaling(config: dict, module: str, rank: int) -> float:
    """PEFT's scaling of one module: alpha (or its alpha_pattern entry) over the rank, or its square root (rsLoRA)."""
    alpha = pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", 8))
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def read_adapter(folder: Path) -> tuple[dict, dict[tuple[str, str], torch.Tensor]]:
    """A PEFT LoRA folder's config and its factors by (module, "A" | "B"); refuses what serving cannot apply.

    The registry ran the same checks at install (:mod:`adapters.validation`); they run again here because
    the folder is read anew, and a file changed on disk since must fail as this adapter's error.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        tensors = load((folder / WEIGHTS_FILE).read_bytes())  # twice as fast as load_file here
    except (OSError, ValueError, SafetensorError) as exc:
        raise InvalidAdapterError(f"not a readable PEFT LoRA folder ({type(exc).__name__})") from exc
    check_factors(tensors, check_config(config))
    pairs = lora_pairs(list(tensors))
    factors = {(module, kind): tensors[name] for module, names in pairs.items() for kind, name in zip("AB", names)}
    return config, factors
