"""ChatRequest: the hook arguments of ai_request/ai_stream as chat messages and settings."""

from __future__ import annotations

import pytest

from erp_plugins_core import BadRequestError, ChatRequest


def test_system_history_and_prompt_in_order_with_defaults() -> None:
    chat = ChatRequest.from_hook(
        "now?", {"system": "be brief", "messages": [{"role": "user", "content": "hi"},
                                                    {"role": "assistant", "content": "hello"}]},
        temperature=0.3, max_tokens=50,
    )
    assert chat.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "now?"},
    ]
    assert (chat.temperature, chat.max_tokens) == (0.3, 50)
    over = ChatRequest.from_hook("x", {"temperature": 1.5, "max_tokens": 7}, temperature=0.3)
    assert (over.temperature, over.max_tokens) == (1.5, 7)


@pytest.mark.parametrize(
    ("prompt", "context", "expected"),
    [
        (3, {}, "prompt must be a string, got int"),
        ("x", [], "context must be an object, got list"),
        ("x", {"system": 1}, "context.system must be a string"),
        ("x", {"messages": [{"role": "user"}]}, "context.messages must be a list"),
        ("x", {"temperature": 3}, "context.temperature must be a number from 0 to 2, got 3"),
        ("x", {"temperature": True}, "context.temperature must be a number"),
        ("x", {"max_tokens": 0}, "context.max_tokens must be an integer >= 1, got 0"),
    ],
)
def test_bad_arguments_name_the_field(prompt, context, expected) -> None:
    with pytest.raises(BadRequestError, match=expected):
        ChatRequest.from_hook(prompt, context, temperature=0.7)

