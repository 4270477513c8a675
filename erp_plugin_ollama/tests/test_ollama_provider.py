"""OllamaProvider driven through the real ollama SDK over loopback HTTP against the fake Ollama server."""

from __future__ import annotations

import socket
import time

import pytest
from ollama_testkit import make_context

from erp_plugin_ollama.plugin import OllamaProvider, Settings, is_offered
from erp_plugins_core._errors import (
    BadRequestError,
    ConfigError,
    LifecycleError,
    ModelNotFoundError,
    ProviderTimeout,
    UnavailableError,
)
from tests.servers.ollama_fake import OllamaFake, answer_for, chunks_for, embedding_for

CHAT = "/api/chat"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_answer_is_the_servers_content(provider: OllamaProvider, fake: OllamaFake, erp_usage) -> None:
    assert await provider.generate_response("hello there", {}) == answer_for("hello there")
    body = fake.last(CHAT).body
    assert body["model"] == "llama3.2" and body["stream"] is False
    assert body["messages"] == [{"role": "user", "content": "hello there"}]
    assert body["options"] == {"temperature": 0.7}
    assert "keep_alive" not in body
    assert erp_usage == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert fake.count("/api/tags", "GET") == 1


async def test_config_reaches_the_request(provider_factory, fake: OllamaFake) -> None:
    plugin = await provider_factory(model="llama3.2:latest", temperature=0.1, context_length=8192, keep_alive="5m")
    await plugin.generate_response("x", {"system": "be brief", "max_tokens": 1,
                                         "messages": [{"role": "assistant", "content": "earlier"}]})
    body = fake.last(CHAT).body
    assert body["options"] == {"temperature": 0.1, "num_ctx": 8192, "num_predict": 1}
    assert body["keep_alive"] == "5m"
    assert body["messages"] == [{"role": "system", "content": "be brief"},
                                {"role": "assistant", "content": "earlier"}, {"role": "user", "content": "x"}]


async def test_bad_context_is_refused_before_any_request(provider: OllamaProvider, fake: OllamaFake) -> None:
    with pytest.raises(BadRequestError, match="context.temperature"):
        await provider.generate_response("x", {"temperature": -1})
    assert fake.count(CHAT) == 0


async def test_stream_yields_chunks_in_order(provider: OllamaProvider, fake: OllamaFake, erp_usage) -> None:
    prompt = "stream me these words please"
    chunks = [c async for c in provider.generate_streaming_response(prompt, {})]
    assert chunks == chunks_for(answer_for(prompt)) and len(chunks) == 6
    assert fake.last(CHAT).body["stream"] is True
    assert erp_usage == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}


async def test_stream_closed_early_releases_the_connection(provider: OllamaProvider) -> None:
    stream = provider.generate_streaming_response("one two three", {})
    assert await anext(stream) == "echo: "
    await stream.aclose()
    assert await provider.generate_response("after", {}) == answer_for("after")


async def test_embeddings(provider_factory, fake: OllamaFake, erp_usage) -> None:
    plugin = await provider_factory(embedding_model="nomic-embed-text", keep_alive=0)
    texts = ["first text", "second", "третий"]
    assert await plugin.generate_embeddings(texts) == [embedding_for(t) for t in texts]
    body = fake.last("/api/embed").body
    assert body == {"model": "nomic-embed-text", "input": texts, "keep_alive": 0}
    assert erp_usage == {"prompt_tokens": 4, "total_tokens": 4}
    assert await plugin.generate_embeddings([]) == []
    assert fake.count("/api/embed") == 1


async def test_embedding_model_defaults_to_the_chat_model(provider: OllamaProvider, fake: OllamaFake) -> None:
    await provider.generate_embeddings(["x"])
    assert fake.last("/api/embed").body["model"] == "llama3.2"


async def test_model_not_offered_names_the_offered_ones(provider_factory, fake: OllamaFake) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        await provider_factory(model="mistral")
    text = str(info.value)
    assert f"model 'mistral' is not on the Ollama server at {fake.url}" in text
    assert "offered: llama3.2:latest, nomic-embed-text:latest" in text
    assert fake.count(CHAT) == 0


async def test_model_removed_after_start(provider: OllamaProvider, fake: OllamaFake) -> None:
    fake.faults.models = ("nomic-embed-text:latest",)
    with pytest.raises(ModelNotFoundError, match=r"no model 'llama3.2' \(HTTP 404\).*ollama pull llama3.2"):
        await provider.generate_response("x", {})
    with pytest.raises(ModelNotFoundError, match="embedding_model 'llama3.2' is not on.*offered: llama3.2:latest"):
        await provider.generate_embeddings(["x"])


async def test_server_error_is_unavailable(provider: OllamaProvider, fake: OllamaFake) -> None:
    fake.fail(500, "llama runner process has terminated")
    with pytest.raises(UnavailableError, match=f"Ollama at {fake.url} failed \\(HTTP 500\\): llama runner"):
        await provider.generate_response("x", {})
    with pytest.raises(UnavailableError, match="HTTP 500"):
        [c async for c in provider.generate_streaming_response("x", {})]
    fake.fail(400, "invalid options")
    with pytest.raises(BadRequestError, match=r"rejected the request \(HTTP 400\): invalid options"):
        await provider.generate_embeddings(["x"])


async def test_connection_refused_names_the_address() -> None:
    host = f"http://127.0.0.1:{free_port()}"
    config = {"model": "llama3.2", "host": host}
    with pytest.raises(UnavailableError, match=f"cannot connect to Ollama at {host}") as info:
        await OllamaProvider().initialize(config, make_context(config))
    assert info.value.fallback is True


async def test_server_gone_after_start(provider: OllamaProvider, fake: OllamaFake) -> None:
    url = fake.url
    fake.stop()
    with pytest.raises(UnavailableError, match=f"Ollama at {url}"):
        await provider.generate_response("x", {})
    with pytest.raises(UnavailableError, match=f"cannot connect to Ollama at {url}"):
        [c async for c in provider.generate_streaming_response("x", {})]


async def test_slow_server_is_a_timeout(provider_factory, fake: OllamaFake) -> None:
    plugin = await provider_factory(timeout=0.3)
    fake.faults.delay = 2
    started = time.perf_counter()
    with pytest.raises(ProviderTimeout, match=f"Ollama at {fake.url} did not answer within 0.3 s"):
        await plugin.generate_response("x", {})
    assert time.perf_counter() - started < 1.5
    with pytest.raises(ProviderTimeout):
        [c async for c in plugin.generate_streaming_response("x", {})]


async def test_stream_broken_after_first_chunk(provider: OllamaProvider, fake: OllamaFake) -> None:
    fake.faults.break_stream = True
    got: list[str] = []
    with pytest.raises(UnavailableError, match=f"connection to Ollama at {fake.url} broke"):
        async for chunk in provider.generate_streaming_response("one two three", {}):
            got.append(chunk)
    assert got == ["echo: "]


async def test_health_check(provider: OllamaProvider, fake: OllamaFake) -> None:
    health = await provider.health_check()
    assert health["healthy"] is True and "llama3.2" in health["detail"]
    fake.faults.models = ("other:7b",)
    health = await provider.health_check()
    assert health["healthy"] is False and "offered: other:7b" in health["detail"]
    url = fake.url
    fake.stop()
    health = await provider.health_check()
    assert health["healthy"] is False and f"cannot connect to Ollama at {url}" in health["detail"]


async def test_not_initialized() -> None:
    plugin = OllamaProvider()
    assert (await plugin.health_check())["healthy"] is False
    with pytest.raises(LifecycleError, match="not initialized"):
        await plugin.generate_embeddings(["x"])


def test_model_names_imply_latest() -> None:
    assert is_offered("llama3.2", ["llama3.2:latest"])
    assert is_offered("llama3.2:latest", ["llama3.2"])
    assert not is_offered("llama3.2:1b", ["llama3.2:latest"])
    assert is_offered("registry.local:5000/team/m", ["registry.local:5000/team/m:latest"])


def test_config_problems_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match="model is required, e.g. --config model=llama3.2"):
        Settings.from_config({})
    with pytest.raises(ConfigError, match="unknown config key.*num_ctx; allowed: context_length"):
        Settings.from_config({"model": "m", "num_ctx": 4})
    with pytest.raises(ConfigError, match="context_length must be an integer >= 1, got 0"):
        Settings.from_config({"model": "m", "context_length": 0})
    with pytest.raises(ConfigError, match="keep_alive must be"):
        Settings.from_config({"model": "m", "keep_alive": [1]})
    s = Settings.from_config({"model": "m"})
    assert (s.host, s.temperature, s.timeout, s.embedding_model) == ("http://127.0.0.1:11434", 0.7, 120.0, "m")
