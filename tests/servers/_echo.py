"""The deterministic answers the AI fakes give, so tests can compute what a provider must return."""

from __future__ import annotations

import hashlib
import re

DEFAULT_DIMENSIONS = 8


def answer_for(prompt: str) -> str:
    """The chat answer to a prompt (for chat requests, the last user message)."""
    return f"echo: {prompt}"


def chunks_for(answer: str) -> list[str]:
    """How an answer is split into stream chunks: one word (with its trailing space) per chunk."""
    return re.findall(r"\S+\s*", answer) or [answer]


def embedding_for(text: str, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """The embedding of `text`, from its SHA-256; every value is exact in float32, so base64 round-trips."""
    digest = hashlib.sha256(text.encode()).digest()
    while len(digest) < dimensions:
        digest += hashlib.sha256(digest).digest()
    return [(b - 128) / 128 for b in digest[:dimensions]]


def count_tokens(text: str) -> int:
    """The token count: whitespace-separated words."""
    return len(text.split())
