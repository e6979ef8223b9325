"""Qwen3.5's ChatML, rendered turn by turn so a chat session only ever prefills the new turn.

Turns are `<|im_start|>{role}\\n{content}<|im_end|>\\n`; the generation prompt is `<|im_start|>assistant\\n`
followed by `<think>\\n` (thinking on) or the empty block `<think>\\n\\n</think>\\n\\n` (thinking off), exactly as the
shipped Jinja templates do for the newest turn (see ../shared/qwen35-architecture.md, "Chat template").

One difference from re-rendering the whole conversation with the Jinja template, on purpose: that template drops
the reasoning (and the empty think block) of assistant turns before the last user turn, which would change tokens
already in the model state. A session that reuses its state keeps them, as llama.cpp's server does with cached
prompts; the model sees its own earlier turns exactly as it produced them.
"""

from __future__ import annotations

from dataclasses import dataclass

IM_START, IM_END, THINK, END_THINK = "<|im_start|>", "<|im_end|>", "<think>", "</think>"

# Thinking defaults by size from the architecture document (2B and 4B unverified there: their shipped templates
# decide when present; see thinking_default_from_template).
THINKING_DEFAULT_BY_SIZE = {"0_8b": False, "2b": False, "4b": False, "9b": True}


@dataclass
class ChatTemplate:
    thinking: bool = False

    def system(self, text: str) -> str:
        return f"{IM_START}system\n{text}{IM_END}\n"

    def user(self, text: str, thinking: bool | None = None) -> str:
        """A user turn and the assistant's generation prompt."""
        return f"{IM_START}user\n{text}{IM_END}\n" + self.generation_prompt(thinking)

    def generation_prompt(self, thinking: bool | None = None) -> str:
        thinking = self.thinking if thinking is None else thinking
        return f"{IM_START}assistant\n" + (f"{THINK}\n" if thinking else f"{THINK}\n\n{END_THINK}\n\n")

    @staticmethod
    def close_assistant(ended_with_im_end: bool) -> str:
        """Text that ends an assistant turn before the next user turn (the model's <|im_end|> is already fed)."""
        return "\n" if ended_with_im_end else f"{IM_END}\n"


def thinking_default_from_template(chat_template: str | None) -> bool | None:
    """What a Jinja chat template does without `enable_thinking`: True = opens <think>, False = empty block."""
    if not chat_template:
        return None
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        return None
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        text = env.from_string(chat_template).render(messages=[{"role": "user", "content": "x"}],
                                                      add_generation_prompt=True)
    except Exception:  # templates may call helpers transformers defines (raise_exception, tools); undecidable here
        return None
    tail = text[text.rfind(f"{IM_START}assistant"):]
    if f"{THINK}\n\n{END_THINK}" in tail:
        return False
    if tail.rstrip().endswith(THINK):
        return True
    return None


def thinking_default(size: str | None, chat_template: str | None) -> bool:
    from_template = thinking_default_from_template(chat_template)
    if from_template is not None:
        return from_template
    return THINKING_DEFAULT_BY_SIZE.get(size or "", False)
