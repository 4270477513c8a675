"""ChatRequest: what `ai_request`/`ai_stream` ask of a chat model, validated once for every AI provider.

`context` may carry `system` (a system prompt), `messages` (earlier turns, each `{role, content}`),
`temperature` (0 to 2) and `max_tokens` (at least 1); other keys are left to the provider.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import BadRequestError


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The messages and sampling settings of one chat call."""

    messages: list[dict[str, str]]
    temperature: float
    max_tokens: int | None

    @classmethod
    def from_hook(
        cls, prompt: Any, context: Any, *, temperature: float, max_tokens: int | None = None
    ) -> ChatRequest:
        """Build from the hook's arguments, with the provider's configured defaults; BadRequestError naming
        the field otherwise."""
        if not isinstance(prompt, str):
            raise BadRequestError(f"prompt must be a string, got {type(prompt).__name__}")
        if not isinstance(context, Mapping):
            raise BadRequestError(f"context must be an object, got {type(context).__name__}")
        messages: list[dict[str, str]] = []
        system = context.get("system")
        if system is not None:
            if not isinstance(system, str):
                raise BadRequestError("context.system must be a string (the system prompt)")
            messages.append({"role": "system", "content": system})
        history = context.get("messages", [])
        if not isinstance(history, list) or not all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in history
        ):
            raise BadRequestError('context.messages must be a list of {"role": ..., "content": ...} objects')
        messages.extend({"role": m["role"], "content": m["content"]} for m in history)
        messages.append({"role": "user", "content": prompt})
        temp = context.get("temperature", temperature)
        if isinstance(temp, bool) or not isinstance(temp, (int, float)) or not 0 <= temp <= 2:
            raise BadRequestError(f"context.temperature must be a number from 0 to 2, got {temp!r}")
        limit = context.get("max_tokens", max_tokens)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise BadRequestError(f"context.max_tokens must be an integer >= 1, got {limit!r}")
        return cls(messages, temp, limit)
