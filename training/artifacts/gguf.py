"""A merged model as a GGUF file, and a LoRA as a llama.cpp GGUF adapter.

Tensor names come from the ``gguf`` package's own name map (the one
llama.cpp's converter uses), and the vocabulary is written the way that
converter writes a byte-level BPE tokenizer. Llama's query and key weights
are stored permuted in GGUF (llama.cpp rotates interleaved pairs, transformers
rotates halves); Qwen2 is stored as it is. A LoRA's update is B @ A, so only
B, whose rows are the output rows, takes that permutation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from core.errors import InvalidRequestError

SUPPORTED = {"LlamaForCausalLM": "LLAMA", "Qwen2ForCausalLM": "QWEN2"}
PERMUTED = {"LLAMA"}  # architectures whose Q and K rows llama.cpp stores permuted
Q8_BLOCK = 32
LORA_MARKERS = (".lora_A.weight", ".lora_B.weight")


def gguf_arch(config) -> str:
    """The gguf MODEL_ARCH member name for a transformers config, or one error naming what is supported."""
    architecture = (getattr(config, "architectures", None) or ["unknown"])[0]
    if architecture not in SUPPORTED:
        raise InvalidRequestError(
            f"GGUF export supports {', '.join(sorted(SUPPORTED))} (SmolLM2, Llama, Qwen2); the base is {architecture}"
        )
    rope = _rope(config)
    if rope.get("rope_type", "default") != "default":
        raise InvalidRequestError(
            f"GGUF export writes plain RoPE only; this base uses {rope['rope_type']!r} RoPE scaling (use the merged or peft format)"
        )
    return SUPPORTED[architecture]


def _rope(config) -> dict:
    return dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})


def _rope_theta(config) -> float:
    return float(_rope(config).get("rope_theta") or getattr(config, "rope_theta", 10000.0))


def permute_rows(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K permutation: within each head, rows in halves become interleaved pairs."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _heads_for(gguf_name: str, config) -> int | None:
    if ".attn_q." in gguf_name:
        return int(config.num_attention_heads)
    if ".attn_k." in gguf_name:
        return int(config.num_key_value_heads)
    return None


def _name_map(arch: str, config):
    import gguf

    return gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch), int(config.num_hidden_layers))


def _gguf_name(name_map, hf_name: str) -> str:
    name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise InvalidRequestError(f"GGUF export: no GGUF name for tensor {hf_name}")
    return name


def _encode(array: np.ndarray, precision: str):
    """The array as written and its GGML type: 1-D tensors stay f32, as llama.cpp's converter keeps them."""
    from gguf import GGMLQuantizationType, quants

    if array.ndim == 1 or precision == "f32":
        return array.astype(np.float32), GGMLQuantizationType.F32
    if precision == "q8_0" and array.shape[-1] % Q8_BLOCK == 0:
        return quants.quantize(array.astype(np.float32), GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
    return array.astype(np.float16), GGMLQuantizationType.F16


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}


def _add_hparams(writer, config, arch: str) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(config.num_key_value_heads))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(int(head_dim))
    writer.add_vocab_size(int(config.vocab_size))


def pre_tokenizer(arch: str, vocab: dict[str, int]) -> str:
    """llama.cpp's name for the pre-tokenizer (its regex split), which it cannot infer from the file."""
    if arch == "QWEN2":
        return "qwen2"
    if "<|begin_of_text|>" in vocab:
        return "llama-bpe"
    if "<|im_start|>" in vocab and len(vocab) == 49152:
        return "smollm"
    return "default"


def _add_vocab(writer, tokenizer, config, arch: str, tokenizer_dir: Path) -> None:
    """Tokens in id order with their types, the BPE merges, special ids and the chat template."""
    import gguf

    vocab = tokenizer.get_vocab()
    by_id = {i: token for token, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    size = max(int(config.vocab_size), len(by_id))
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(arch, vocab))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=len(tokens))
    special.add_to_gguf(writer, quiet=True)


def _check_tokenizer(tokenizer_dir: Path) -> None:
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = data.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise InvalidRequestError("GGUF export writes byte-level BPE tokenizers only (as SmolLM2, Llama 3 and Qwen2 use)")


def model_tensors(model, arch: str) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every weight, Q/K permuted where llama.cpp expects it; a tied head is skipped."""
    config = model.config
    name_map = _name_map(arch, config)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        if "rotary_emb" in hf_name:
            continue
        name = _gguf_name(name_map, hf_name)
        array = tensor.detach().to(torch.float32).cpu().numpy()
        heads = _heads_for(name, config) if arch in PERMUTED else None
        yield name, permute_rows(array, heads) if heads else array


def write_model_gguf(
    model, tokenizer, tokenizer_dir: Path, path: Path, precision: str, title: str,
    progress: Callable[[float], None] | None = None,
) -> None:
    """Write the (merged) model and its vocabulary as one GGUF file."""
    import gguf

    config = model.config
    arch = gguf_arch(config)
    _check_tokenizer(tokenizer_dir)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, arch)])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(title)
    _add_hparams(writer, config, arch)
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[precision]))
    if precision == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_vocab(writer, tokenizer, config, arch, tokenizer_dir)
    tensors = list(model_tensors(model, arch))
    for done, (name, array) in enumerate(tensors, 1):
        data, qtype = _encode(array, precision)
        writer.add_tensor(name, data, raw_dtype=qtype)
        if progress:
            progress(done / len(tensors))
    _finish(writer)


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def lora_scale_alpha(adapter_config: dict) -> float:
    """The alpha llama.cpp needs: it scales by alpha / rank, as PEFT does unless rsLoRA (alpha / sqrt(rank))."""
    rank = int(adapter_config["r"])
    alpha = float(adapter_config.get("lora_alpha", rank))
    return alpha * math.sqrt(rank) if adapter_config.get("use_rslora") else alpha


def _check_lora_config(adapter_config: dict) -> None:
    if adapter_config.get("use_dora"):
        raise InvalidRequestError("a DoRA adapter has no llama.cpp GGUF adapter form; export it merged instead")
    if adapter_config.get("rank_pattern") or adapter_config.get("alpha_pattern"):
        raise InvalidRequestError("llama.cpp adapters take one rank and alpha; this adapter varies them per module")


def lora_tensors(adapter_dir: Path, config, arch: str) -> Iterator[tuple[str, np.ndarray]]:
    """(``blk.N.attn_q.weight.lora_a`` etc., float32 array) for every LoRA factor of a PEFT folder."""
    from safetensors.numpy import load_file

    name_map = _name_map(arch, config)
    for key, array in sorted(load_file(str(adapter_dir / "adapter_model.safetensors")).items()):
        marker = next((m for m in LORA_MARKERS if key.endswith(m)), None)
        if marker is None:
            raise InvalidRequestError(f"GGUF adapter export: tensor {key} is not a LoRA factor of a linear layer")
        module = key[: -len(marker)].removeprefix("base_model.model.")
        name = _gguf_name(name_map, f"{module}.weight")
        array = array.astype(np.float32)
        is_b = marker == ".lora_B.weight"
        heads = _heads_for(name, config) if arch in PERMUTED and is_b else None
        yield f"{name}.lora_{'b' if is_b else 'a'}", permute_rows(array, heads) if heads else array


def write_lora_gguf(adapter_dir: Path, config, path: Path, title: str) -> None:
    """The LoRA alone in llama.cpp's adapter format (``llama-cli -m BASE.gguf --lora FILE``), factors in f32."""
    import gguf

    arch = gguf_arch(config)
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    _check_lora_config(adapter_config)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, arch)])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(title)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, lora_scale_alpha(adapter_config))
    for name, array in lora_tensors(adapter_dir, config, arch):
        writer.add_tensor(name, array)
    _finish(writer)


def estimate_bytes(parameters: int, precision: str) -> int:
    """Bytes of a GGUF file of that many parameters, give or take its vocabulary."""
    per = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32}[precision]
    return int(parameters * per)
