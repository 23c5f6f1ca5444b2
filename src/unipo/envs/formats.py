"""How tool calls and observations look in the token stream: a compact syntax for character-level
models, and the OpenAI-compatible one chat models are trained on (Hermes / Qwen ``<tool_call>`` JSON,
results rendered by the tokenizer's own chat template as ``role: tool`` messages).

A format answers four questions for the rollout:

    stop                     strings that end a model turn besides EOS (a closed tool call)
    parse(turn_text)         the calls the turn makes; [] means the turn is the final answer
    render(results)          the text appended after the turn: the tool results (and whatever the
                             template puts before the model's next turn); its tokens get loss mask 0
    observe(text)            the same for a Gym observation
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Protocol

from unipo.envs.tools import Tool, ToolCall, ToolResult, first_parameter, tool_name, tool_schema


class ToolFormat(Protocol):
    stop: tuple[str, ...]

    def parse(self, text: str, tools: dict[str, Tool]) -> list[ToolCall]: ...

    def render(self, results: Sequence[ToolResult]) -> str: ...

    def observe(self, text: str) -> str: ...

    def describe(self, tools: Sequence[Tool]) -> str: ...


class CompactFormat:
    """``[name args]`` → ``=result`` and a newline: short enough for a character-level model.

        [calc 12*7]=84
        [calc 84+5]=89
        89</s>

    ``args`` go to the tool's first parameter as one string, or are a JSON object of keyword arguments
    when they start with ``{``. With one tool the name may be left out: ``[12*7]``. A turn ends at
    ``]``; a turn without ``[`` is the final answer. An unclosed call is a malformed call (error
    observation), not a final answer.
    """

    stop = ("]",)
    _CALL = re.compile(r"\[([^\[\]]*)\]")

    def parse(self, text: str, tools: dict[str, Tool]) -> list[ToolCall]:
        if "[" not in text:
            return []
        calls = []
        for k, body in enumerate(self._CALL.findall(text)):
            name, _, args = body.strip().partition(" ")
            if name not in tools and len(tools) == 1:  # the one tool's name may be left out
                name, args = next(iter(tools)), body.strip()
            fn = tools.get(name)
            if args.strip().startswith("{"):
                try:
                    kwargs = json.loads(args)
                except json.JSONDecodeError:
                    kwargs = {"__unparsed__": args}
            else:
                param = first_parameter(fn) if fn is not None else None
                kwargs = {param: args.strip()} if param else {}
            calls.append(ToolCall(name, kwargs, id=f"call_{k}"))
        return calls or [ToolCall("", {"__unparsed__": text}, id="call_0")]  # "[" never closed

    def render(self, results: Sequence[ToolResult]) -> str:
        return "".join(f"={r.content}\n" for r in results)

    def observe(self, text: str) -> str:
        return f"{text}\n"

    def describe(self, tools: Sequence[Tool]) -> str:
        return "tools: " + ", ".join(f"[{tool_name(t)} ...]" for t in tools)


class ChatTemplateFormat:
    """OpenAI-compatible tool calling through the tokenizer's chat template (Hermes / Qwen2.5 / Qwen3).

    The model writes ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (any number) and ends
    its turn with EOS, as these templates render assistant ``tool_calls``. Results are rendered by the
    template itself as ``{"role": "tool", "content": ...}`` messages: the text the template adds after an
    assistant message with those calls, up to and including the generation prompt of the next assistant
    turn, taken as a suffix (the prefix-preserving rule TRL and verl rely on; a template that rewrites
    earlier turns is refused with a clear error). ``observe`` renders a Gym observation as a user turn.
    """

    stop: tuple[str, ...] = ()
    _CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)

    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "env format 'chat' needs a tokenizer with a chat template (tokenizer.chat_template)"
            )
        self.tokenizer = tokenizer

    def parse(self, text: str, tools: dict[str, Tool]) -> list[ToolCall]:
        calls = []
        for k, body in enumerate(self._CALL.findall(text)):
            try:
                obj = json.loads(body)
                name, args = str(obj["name"]), obj.get("arguments", {})
                args = json.loads(args) if isinstance(args, str) else args
                calls.append(ToolCall(name, dict(args), id=f"call_{k}"))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                calls.append(ToolCall("", {"__unparsed__": body}, id=f"call_{k}"))
        if not calls and "<tool_call>" in text:
            calls.append(ToolCall("", {"__unparsed__": text}, id="call_0"))
        return calls

    def _suffix(self, before: list[dict[str, Any]], after: list[dict[str, Any]]) -> str:
        render = self.tokenizer.apply_chat_template
        head = render(before, tokenize=False)
        full = render(after, tokenize=False, add_generation_prompt=True)
        if not full.startswith(head):
            raise ValueError(
                "the chat template is not prefix-preserving (rendering a tool message changed the earlier "
                "turns), so tool results cannot be appended as tokens; use a template that is, as TRL "
                "requires"
            )
        # the model's turn ended at EOS: what the template writes after it ("\n") belongs to the suffix
        eos = getattr(self.tokenizer, "eos_token", None) or ""
        at = head.rfind(eos) if eos else -1
        tail = head[at + len(eos) :] if at >= 0 else ""
        return tail + full[len(head) :]

    def render(self, results: Sequence[ToolResult]) -> str:
        calls = [r.call.openai() for r in results]
        before = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": calls}]
        tool_msgs = [{"role": "tool", "tool_call_id": r.call.id, "name": r.call.name, "content": r.content}
                     for r in results]  # fmt: skip
        return self._suffix(before, before + tool_msgs)

    def observe(self, text: str) -> str:
        before = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
        return self._suffix(before, [*before, {"role": "user", "content": text}])

    def describe(self, tools: Sequence[Tool]) -> str:
        return json.dumps([tool_schema(t) for t in tools])


def make_format(name: str, tokenizer: Any) -> ToolFormat:
    """``compact`` or ``chat`` (OpenAI-compatible, through the chat template)."""
    if name == "compact":
        return CompactFormat()
    if name == "chat":
        return ChatTemplateFormat(tokenizer)
    raise ValueError(f"env.format={name!r}: choose compact (character-level models) or chat (chat templates)")
