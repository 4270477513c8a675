"""The OpenAI and Ollama plugins driven through PluginHost, in process and sandboxed, with the real SDKs
making real HTTP requests to loopback servers that speak each service's wire protocol."""

from __future__ import annotations

import json

import pytest
from cryptography.fernet import Fernet

from erp_plugins_core import AllPluginsFailed, PluginHost, StreamInterrupted
from servers import ollama_fake, openai_fake
from servers.ollama_fake import OllamaFake
from servers.openai_fake import OpenAIFake

KEY = openai_fake.DEFAULT_KEY


@pytest.fixture(params=["in_process", "sandboxed"])
def mode(request, monkeypatch) -> str:
    if request.param == "in_process":
        monkeypatch.setenv("ERP_PLUGINS_UNSAFE_NO_SANDBOX", "1")
    else:
        from erp_plugins_core._sandbox import sandbox_available

        why = sandbox_available()
        if why is not None:
            pytest.fail(f"the sandbox cannot start here: {why}")
    return request.param


@pytest.fixture
def servers():
    with OllamaFake() as ollama, OpenAIFake() as openai:
        yield ollama, openai


@pytest.fixture
async def host(mode, servers, tmp_path, monkeypatch):
    monkeypatch.setenv("ERP_PLUGINS_SECRET_KEY", Fernet.generate_key().decode())
    monkeypatch.setenv("TEST_OPENAI_KEY", KEY)
    ollama, openai = servers
    async with PluginHost(tmp_path / "state.db", health_loop=False) as h:
        await h.enable("local_llm_provider", tenant="acme", priority=1,
                       config={"host": ollama.url, "model": "llama3.2", "timeout": 5})
        await h.enable("openai_provider", tenant="acme", priority=2,
                       config={"api_key": "env:TEST_OPENAI_KEY", "base_url": openai.url, "model": "gpt-4o-mini",
                               "max_retries": 0, "timeout": 5})
        yield h


async def test_call_first_stream_and_embeddings(host, servers) -> None:
    ollama, openai = servers
    results = {r.plugin: r for r in await host.call("ai_request", tenant="acme", prompt="invoice 42", context={})}
    assert results["local_llm_provider"].result == ollama_fake.answer_for("invoice 42")
    assert results["openai_provider"].result == openai_fake.answer_for("invoice 42")
    assert results["openai_provider"].usage["prompt_tokens"] > 0
    assert results["local_llm_provider"].usage["completion_tokens"] > 0
    assert await host.first("ai_request", tenant="acme", prompt="hi", context={}) == ollama_fake.answer_for("hi")
    chunks = [c async for c in host.stream("ai_stream", tenant="acme", prompt="one two three", context={})]
    answer = ollama_fake.answer_for("one two three")
    assert chunks == ollama_fake.chunks_for(answer) and len(chunks) > 1
    [emb_ollama, emb_openai] = sorted(await host.call("ai_embedding", tenant="acme", texts=["a", "b"]),
                                      key=lambda r: r.plugin)
    assert emb_ollama.result == [ollama_fake.embedding_for("a"), ollama_fake.embedding_for("b")]
    assert emb_openai.result == [openai_fake.embedding_for("a"), openai_fake.embedding_for("b")]
    assert openai.count("/v1/chat/completions") >= 1 and ollama.count("/api/chat") >= 2


async def test_fallback_when_the_first_provider_is_down_or_rate_limited(host, servers) -> None:
    ollama, openai = servers
    address = ollama.url.removeprefix("http://")
    ollama.stop()
    assert await host.first("ai_request", tenant="acme", prompt="q", context={}) == openai_fake.answer_for("q")
    [down] = [r for r in await host.call("ai_request", tenant="acme", prompt="q", context={})
              if r.plugin == "local_llm_provider"]
    assert down.error_kind == "unavailable" and address in down.error
    chunks = [c async for c in host.stream("ai_stream", tenant="acme", prompt="x y", context={})]
    assert "".join(chunks) == openai_fake.answer_for("x y")
    [report] = [r for r in await host.health("acme") if r.plugin == "local_llm_provider"]
    assert not report.healthy and address in report.error


async def test_rate_limit_falls_back_and_reports_retry_after(host, servers) -> None:
    ollama, openai = servers
    ollama.fail(503, "overloaded", times=1)
    openai.fail(429, retry_after="7", times=1)
    results = {r.plugin: r for r in await host.call("ai_request", tenant="acme", prompt="q", context={})}
    assert results["openai_provider"].error_kind == "rate_limit"
    assert results["openai_provider"].exception.retry_after == 7
    assert results["local_llm_provider"].error_kind == "unavailable"
    openai.fail(429, retry_after="7", times=1)
    ollama.fail(503, "overloaded", times=1)
    with pytest.raises(AllPluginsFailed, match="openai_provider"):
        await host.first("ai_request", tenant="acme", prompt="q", context={})  # both fell through
    openai.fail(429, retry_after="7", times=1)
    assert await host.first("ai_request", tenant="acme", prompt="q", context={}) == ollama_fake.answer_for("q")


async def test_bad_key_is_reported_without_the_key_and_stops_fallback(host, servers, monkeypatch) -> None:
    ollama, openai = servers
    openai.api_key = "sk-some-other-key-000000"
    results = {r.plugin: r for r in await host.call("ai_request", tenant="acme", prompt="q", context={})}
    bad = results["openai_provider"]
    assert bad.error_kind == "authentication" and KEY not in json.dumps(bad.to_json())
    ollama.stop()
    with pytest.raises(AllPluginsFailed) as info:
        await host.first("ai_request", tenant="acme", prompt="q", context={})
    assert "openai_provider" in str(info.value) and KEY not in str(info.value)


async def test_stream_failing_after_first_chunk_is_not_spliced(host, servers) -> None:
    ollama, openai = servers
    ollama.faults.break_stream = True
    got = []
    with pytest.raises(StreamInterrupted, match="local_llm_provider failed after"):
        async for chunk in host.stream("ai_stream", tenant="acme", prompt="a b c d", context={}):
            got.append(chunk)
    assert got and "".join(got) != openai_fake.answer_for("a b c d")


async def test_model_not_offered_refuses_enable_naming_offered_models(host, servers) -> None:
    ollama, _ = servers
    with pytest.raises(Exception, match="llama3.2"):
        await host.enable("local_llm_provider", tenant="globex", config={"host": ollama.url, "model": "nope-model"})
