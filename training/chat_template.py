"""The chat template used for training: the serving template with the assistant turns marked.

TRL computes an assistant-only loss from ``{% generation %}`` markers. Most
model templates (SmolLM2's among them) have none, so training uses a marked
copy that renders exactly the same text; serving keeps the model's own. The
marked span covers the answer and its end-of-turn token, so the model learns
to stop.
"""

from __future__ import annotations

from core.errors import ConfigError

# SmolLM2 and other ChatML models: the same text as their template, with the
# assistant content and <|im_end|> inside the generation block.
_CHATML_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
MARKED_CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + _CHATML_DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_PROBE = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "Question one?"},
    {"role": "assistant", "content": "Answer one."},
    {"role": "user", "content": "Question two?"},
    {"role": "assistant", "content": "Answer two."},
]


def training_template(tokenizer) -> str:
    """A template with generation markers that renders exactly what the tokenizer's own template renders."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    own = tokenizer.chat_template
    if not own:
        raise ConfigError("the base model's tokenizer has no chat template; it cannot be trained on chats")
    if has_generation_markers(own):
        return own
    candidates = [MARKED_CHATML] if "<|im_start|>" in own else []
    try:
        patched = get_training_chat_template(tokenizer)
    except (ValueError, NotImplementedError):
        patched = None
    if patched:
        candidates.append(patched)
    expected = tokenizer.apply_chat_template(_PROBE, tokenize=False)
    for template in candidates:
        if tokenizer.apply_chat_template(_PROBE, tokenize=False, chat_template=template) == expected:
            return template
    raise ConfigError(
        "no training copy of this base model's chat template is known, so an assistant-only loss cannot be set up"
    )


def assistant_spans(tokenizer, messages: list[dict], template: str) -> tuple[list[int], list[int]]:
    """Token ids of one chat and its assistant mask, as training sees them."""
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, chat_template=template
    )
    return list(out["input_ids"]), list(out["assistant_masks"])
