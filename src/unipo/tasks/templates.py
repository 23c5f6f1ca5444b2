"""Turning a question into the prompt string the policy sees."""

from __future__ import annotations

import string
from typing import Any


def _template_fields(template: str) -> set[str]:
    """Names of the ``{fields}`` in a ``str.format`` template (``{{`` and ``}}`` are literal braces)."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise ValueError(f"prompt template {template!r} is not a valid format string: {err}") from err


def render_prompt(
    tokenizer: Any,
    question: str,
    template: str = "{question}",
    chat: bool | None = None,
    system_prompt: str | None = None,
) -> str:
    """``template.format(question=question)``, wrapped in the tokenizer's chat template if asked.

    Args:
        tokenizer: a Hugging Face tokenizer (only ``chat_template`` and ``apply_chat_template`` are used).
        question: the example's question.
        template: a ``str.format`` string whose only field is ``{question}``; write literal braces
            as ``{{`` and ``}}``.
        chat: True: apply the chat template (ValueError if the tokenizer has none); False: plain
            text; None: apply it if the tokenizer has one.
        system_prompt: optional system message, used only with the chat template.

    Returns:
        The prompt text, ending with the generation prompt (e.g. the assistant header) in chat mode.
    """
    fields = _template_fields(template)
    if fields != {"question"}:
        raise ValueError(
            f"prompt template must contain {{question}} and no other field; got fields {sorted(fields)} "
            f"in {template!r} (write literal braces as {{{{ and }}}})"
        )
    text = template.format(question=question)
    has_chat_template = bool(getattr(tokenizer, "chat_template", None))
    if chat is None:
        chat = has_chat_template
    if not chat:
        return text
    if not has_chat_template:
        raise ValueError(
            f"chat=True but the tokenizer {type(tokenizer).__name__} has no chat_template; "
            "use chat=False (plain prompt) or a tokenizer with a chat template"
        )
    messages = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    messages.append({"role": "user", "content": text})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
