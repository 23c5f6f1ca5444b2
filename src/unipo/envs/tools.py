"""Tools: typed Python functions with docstrings, their JSON function schemas, and calling them safely.

A tool is a plain function with type hints and a Google-style docstring, as TRL's ``tools=[...]`` and
transformers' chat templates expect::

    def calc(expression: str) -> str:
        '''Evaluate an arithmetic expression.

        Args:
            expression: digits, + - * and parentheses, e.g. 12*7
        '''

``tool_schema(fn)`` is its OpenAI function schema (``transformers.utils.get_json_schema``), the form
``tokenizer.apply_chat_template(messages, tools=[...])`` renders. ``call_tool`` runs one call with a
time limit in a daemon thread: a call that raises, returns something that is not text, gets arguments
it does not take, or runs past the limit becomes an error *observation* (``ToolResult.ok`` False), never
an exception in the rollout. A thread cannot be killed, so a hung pure-Python tool keeps its thread
until it returns; tools that run model-written code go through the sandbox (``python_tool``), whose
server kills the program at its wall-clock limit.
"""

from __future__ import annotations

import ast
import inspect
import json
import operator
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Tool = Callable[..., Any]


@dataclass(frozen=True)
class ToolCall:
    """One call the model wrote: the tool's name and its keyword arguments (OpenAI ``function``)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str = ""

    def openai(self) -> dict[str, Any]:
        """The OpenAI ``tool_calls`` entry: {"id", "type": "function", "function": {"name", "arguments"}}."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments)}}  # fmt: skip


@dataclass(frozen=True)
class ToolResult:
    call: ToolCall
    content: str  # what the model reads: the tool's return value, or the error
    ok: bool = True  # False: unknown tool, bad arguments, raised, timed out, or non-text result
    error: str = ""  # the reason when not ok: unknown_tool | bad_arguments | raised | timeout | bad_result


def tool_name(fn: Tool) -> str:
    return getattr(fn, "tool_name", None) or getattr(fn, "__name__", type(fn).__name__)


def tool_schema(fn: Tool) -> dict[str, Any]:
    """The OpenAI function schema of ``fn`` from its type hints and docstring (transformers'
    ``get_json_schema``, which refuses a function without them and says why)."""
    from transformers.utils import get_json_schema

    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn).__call__.__get__(fn)
    schema = get_json_schema(target)
    schema["function"]["name"] = tool_name(fn)
    return schema


def first_parameter(fn: Tool) -> str | None:
    """Name of ``fn``'s first parameter (a compact call's single argument goes there)."""
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    return params[0].name if params else None


def call_tool(tools: dict[str, Tool], call: ToolCall, timeout_s: float) -> ToolResult:
    """Run ``call`` against ``tools`` with a time limit; every failure is a ``ToolResult`` with ok False."""
    fn = tools.get(call.name)
    if fn is None:
        return ToolResult(call, f"error: unknown tool {call.name!r}; tools: {', '.join(sorted(tools))}",
                          False, "unknown_tool")  # fmt: skip
    try:
        inspect.signature(fn).bind(**call.arguments)
    except TypeError as e:
        return ToolResult(call, f"error: bad arguments for {call.name}: {e}", False, "bad_arguments")
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn(**call.arguments)
        except BaseException as e:
            box["error"] = f"{type(e).__name__}: {e}"

    worker = threading.Thread(target=run, daemon=True, name=f"tool-{call.name}")
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        return ToolResult(call, f"error: {call.name} timed out after {timeout_s:g}s", False, "timeout")
    if "error" in box:
        return ToolResult(call, f"error: {box['error']}", False, "raised")
    value = box.get("value")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = _number(value)
    if not isinstance(value, str):
        return ToolResult(call, f"error: {call.name} returned {type(value).__name__}, not text", False,
                          "bad_result")  # fmt: skip
    return ToolResult(call, value)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


# ------------------------------------------------------------------ built-in tools
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
        ast.Mod: operator.mod}  # fmt: skip


def calculate(expression: str) -> str:
    """Evaluate an integer arithmetic expression.

    Args:
        expression: integers with + - * // % and parentheses, e.g. 12*7+3
    """
    tree = ast.parse(expression.strip(), mode="eval")

    def ev(node: ast.AST) -> int:
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, int)
            and not isinstance(node.value, bool)
        ):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Mult) and abs(left) * abs(right) > 10**12:
                raise ValueError("result too large")
            return _OPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return -ev(node.operand) if isinstance(node.op, ast.USub) else ev(node.operand)
        raise ValueError(f"not integer arithmetic: {ast.dump(node)[:40]}")

    return str(ev(tree.body))


class PythonTool:
    """A ``python(code)`` tool that runs the model's program in the sandbox (``unipo.rewards.sandbox``)
    and returns its stdout, or the sandbox's reason (``cpu_time``, ``network``, ``forbidden``, ...)."""

    tool_name = "python"

    def __init__(self, wall_s: float = 3.0, cpu_s: float = 1.0, memory_mb: int = 256) -> None:
        from unipo.rewards.sandbox import SandboxLimits

        self.limits = SandboxLimits(wall_s=wall_s, cpu_s=cpu_s, memory_mb=memory_mb, output_bytes=4096)
        self._sandbox: Any = None

    def __call__(self, code: str) -> str:
        """Run a Python program and return what it prints.

        Args:
            code: the program; print() what you want to see
        """
        from unipo.rewards.sandbox import Sandbox

        if self._sandbox is None:
            self._sandbox = Sandbox(self.limits)
        result = self._sandbox.run_python(code, limits=self.limits)
        if result.reason in ("passed", "partial"):
            return result.stdout.strip()
        detail = f": {result.detail.strip().splitlines()[-1]}" if result.detail.strip() else ""
        return f"error: {result.reason}{detail}"
