"""An Ollama Modelfile beside the merged GGUF.

Ollama writes prompts with Go templates, not Jinja. A ChatML template (SmolLM2,
Qwen2) is rewritten to its Go form here; for any other template the TEMPLATE
line is left out and Ollama falls back to the chat template stored in the GGUF.
"""

from __future__ import annotations

import json
from typing import Any

CHATML_GO = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)

# Serving option → Ollama PARAMETER.
PARAMETERS = {"repetition_penalty": "repeat_penalty", "temperature": "temperature", "top_p": "top_p", "max_new_tokens": "num_predict"}


def is_chatml(template: str | None) -> bool:
    return bool(template) and "<|im_start|>" in template and "<|im_end|>" in template


def default_system_prompt(tokenizer) -> str:
    """The system prompt a ChatML template adds when a chat has none (SmolLM2 names itself), or ''."""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    head = "<|im_start|>system\n"
    if not rendered.startswith(head):
        return ""
    return rendered[len(head) : rendered.index("<|im_end|>")]


def _quoted(text: str) -> str:
    """A Modelfile value in triple quotes (which it cannot contain)."""
    return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'


def modelfile(
    gguf_name: str, tokenizer, system_prompt: str, generation: dict[str, Any], stop: list[str]
) -> str:
    """FROM the GGUF, TEMPLATE in Go form, SYSTEM, and the serving options as PARAMETER lines."""
    template = getattr(tokenizer, "chat_template", None)
    lines = [f"FROM ./{gguf_name}", ""]
    if is_chatml(template):
        lines += [f"TEMPLATE {_quoted(CHATML_GO)}", ""]
        system_prompt = system_prompt or default_system_prompt(tokenizer)
    if system_prompt:
        lines += [f"SYSTEM {_quoted(system_prompt)}", ""]
    for token in stop:
        lines.append(f"PARAMETER stop {json.dumps(token)}")
    for option, parameter in PARAMETERS.items():
        if generation.get(option) is not None:
            lines.append(f"PARAMETER {parameter} {generation[option]}")
    return "\n".join(lines) + "\n"
