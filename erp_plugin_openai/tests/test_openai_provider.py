"""OpenAIProvider driven through the real openai SDK over loopback HTTP against the fake OpenAI server."""

from __future__ import annotations

import pytest
from openai_testkit import make_context

from erp_plugin_openai.plugin import OpenAIProvider, Settings
from erp_plugins_core._errors import BadRequestError, ConfigError, LifecycleError, ModelNotFoundError
from tests.servers.openai_fake import OpenAIFake, answer_for, chunks_for, embedding_for

CHAT = "/v1/chat/completions"


async def test_answer_is_the_servers_content(provider: OpenAIProvider, fake: OpenAIFake) -> None:
    assert await provider.generate_response("hello there", {}) == answer_for("hello there")
    body = fake.last(CHAT).body
    assert body["model"] == "gpt-4o-mini"
    assert body["temperature"] == 0.7
    assert body["messages"] == [{"role": "user", "content": "hello there"}]
    assert "max_tokens" not in body and "stream" not in body


async def test_initialize_lists_models_once_and_sends_config(provider_factory, fake: OpenAIFake) -> None:
    plugin = await provider_factory(model="gpt-4o", temperature=0.2, max_tokens=3, organization="org-x")
    assert fake.count("/v1/models", "GET") == 1
    assert plugin.offered_models == fake.faults.models
    answer = await plugin.generate_response("one two three four five", {})
    assert answer == "".join(chunks_for(answer_for("one two three four five"))[:3])
    seen = fake.last(CHAT)
    assert seen.body["model"] == "gpt-4o" and seen.body["temperature"] == 0.2 and seen.body["max_tokens"] == 3
    assert seen.headers["openai-organization"] == "org-x"
    assert seen.headers["authorization"] == f"Bearer {fake.api_key}"


async def test_context_adds_system_history_and_overrides(provider: OpenAIProvider, fake: OpenAIFake) -> None:
    history = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "reply"}]
    context = {"system": "be brief", "messages": history, "temperature": 0, "max_tokens": 2}
    assert await provider.generate_response("now this", context) == "echo: now "
    body = fake.last(CHAT).body
    assert body["messages"] == [{"role": "system", "content": "be brief"}, *history,
                                {"role": "user", "content": "now this"}]
    assert body["temperature"] == 0 and body["max_tokens"] == 2


@pytest.mark.parametrize(
    ("context", "named"),
    [({"temperature": 3}, "context.temperature"), ({"messages": "hi"}, "context.messages"),
     ({"system": 5}, "context.system"), ({"max_tokens": 0}, "context.max_tokens")],
)
async def test_bad_context_is_refused_before_any_request(provider, fake: OpenAIFake, context, named) -> None:
    with pytest.raises(BadRequestError, match=named):
        await provider.generate_response("x", context)
    assert fake.count(CHAT) == 0


async def test_usage_is_recorded(provider: OpenAIProvider, erp_usage: dict[str, int]) -> None:
    await provider.generate_response("a b c", {})
    assert erp_usage == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


async def test_stream_yields_chunks_in_order(provider: OpenAIProvider, fake: OpenAIFake, erp_usage) -> None:
    prompt = "stream me these words please"
    chunks = [c async for c in provider.generate_streaming_response(prompt, {})]
    assert chunks == chunks_for(answer_for(prompt))
    assert len(chunks) == 6
    body = fake.last(CHAT).body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert erp_usage == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}


async def test_stream_closed_early_releases_the_connection(provider: OpenAIProvider, fake: OpenAIFake) -> None:
    stream = provider.generate_streaming_response("one two three", {})
    assert await anext(stream) == "echo: "
    await stream.aclose()
    assert await provider.generate_response("after", {}) == answer_for("after")


async def test_embeddings_are_decoded_from_base64(provider: OpenAIProvider, fake: OpenAIFake, erp_usage) -> None:
    texts = ["first text", "second", "третий"]
    vectors = await provider.generate_embeddings(texts)
    assert vectors == [embedding_for(t) for t in texts]
    assert all(isinstance(x, float) for v in vectors for x in v)
    body = fake.last("/v1/embeddings").body
    assert body["model"] == "text-embedding-3-small"
    assert body["encoding_format"] == "base64"
    assert erp_usage == {"prompt_tokens": 4, "total_tokens": 4}


async def test_embeddings_of_nothing_makes_no_request(provider: OpenAIProvider, fake: OpenAIFake) -> None:
    assert await provider.generate_embeddings([]) == []
    assert fake.count("/v1/embeddings") == 0
    with pytest.raises(BadRequestError, match="list of strings"):
        await provider.generate_embeddings([1, 2])  # type: ignore[list-item]


async def test_model_not_offered_names_the_offered_ones(provider_factory, fake: OpenAIFake) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        await provider_factory(model="gpt-9-imaginary")
    text = str(info.value)
    assert "'gpt-9-imaginary' is not offered by http://127.0.0.1:" in text
    for offered in fake.faults.models:
        assert offered in text
    assert fake.count(CHAT) == 0


async def test_validate_model_config_checks_the_given_config(provider: OpenAIProvider) -> None:
    assert await provider.validate_model_config({"model": "gpt-4o"}) is True
    with pytest.raises(ModelNotFoundError, match="offered: gpt-4o, gpt-4o-mini, text-embedding-3-small"):
        await provider.validate_model_config({"model": "nope"})


async def test_model_withdrawn_after_start_is_model_not_found(provider: OpenAIProvider, fake: OpenAIFake) -> None:
    fake.faults.models = ("gpt-4o",)
    with pytest.raises(ModelNotFoundError, match="model 'gpt-4o-mini'.*HTTP 404 model_not_found"):
        await provider.generate_response("hi", {})


async def test_embedding_model_not_offered_names_the_offered_ones(provider_factory, fake, caplog) -> None:
    with caplog.at_level("WARNING", logger="erp_plugins.plugin.openai_provider"):
        plugin = await provider_factory(embedding_model="embed-nope")  # starts: chat still works
    assert "embedding_model 'embed-nope' is not offered" in caplog.text
    assert fake.api_key not in caplog.text
    assert await plugin.generate_response("ok", {}) == answer_for("ok")
    with pytest.raises(ModelNotFoundError, match="embedding_model 'embed-nope' is not offered.*offered: gpt-4o"):
        await plugin.generate_embeddings(["x"])


async def test_health_check(provider: OpenAIProvider, fake: OpenAIFake) -> None:
    health = await provider.health_check()
    assert health["healthy"] is True and "gpt-4o-mini" in health["detail"]
    fake.faults.models = ("gpt-4o",)
    health = await provider.health_check()
    assert health == {"healthy": False, "detail": health["detail"]}
    assert "'gpt-4o-mini' is not offered" in health["detail"] and "offered: gpt-4o" in health["detail"]
    address = fake.address
    fake.stop()
    health = await provider.health_check()
    assert health["healthy"] is False and address in health["detail"]


async def test_not_initialized_and_after_cleanup() -> None:
    plugin = OpenAIProvider()
    assert (await plugin.health_check())["healthy"] is False
    with pytest.raises(LifecycleError, match="not initialized"):
        await plugin.generate_response("x", {})


async def test_sdk_retries_come_from_config(provider_factory, fake: OpenAIFake) -> None:
    plugin = await provider_factory(max_retries=2)
    fake.fail(500, retry_after="0.01", times=2)
    assert await plugin.generate_response("third time", {}) == answer_for("third time")
    assert fake.count(CHAT) == 3


def test_config_problems_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match="api_key is required; pass --config api_key=env:OPENAI_API_KEY"):
        Settings.from_config({})
    with pytest.raises(ConfigError, match="unknown config key.*colour; allowed: api_key"):
        Settings.from_config({"api_key": "k", "colour": "red"})
    with pytest.raises(ConfigError, match=r"temperature must be a number >= 0 and <= 2, got 2.5"):
        Settings.from_config({"api_key": "k", "temperature": 2.5})
    with pytest.raises(ConfigError, match="max_retries must be an integer"):
        Settings.from_config({"api_key": "k", "max_retries": 1.5})
    s = Settings.from_config({"api_key": "sk-very-secret"})
    assert s.base_url == "https://api.openai.com/v1" and s.model == "gpt-4o-mini" and s.max_tokens is None
    assert "sk-very-secret" not in repr(s)


async def test_repr_of_plugin_and_context_hide_the_key(provider: OpenAIProvider, fake: OpenAIFake) -> None:
    assert fake.api_key not in repr(provider)
    assert fake.api_key not in repr(make_context({"api_key": fake.api_key}))
