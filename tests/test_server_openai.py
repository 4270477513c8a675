"""The OpenAI-compatible endpoint driven by the official `openai` SDK, against a real `erp-plugins serve`
whose tenant runs the sandboxed `local_llm_provider` and `openai_provider` over loopback fakes."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from serverkit import Server, bearer, make_token, server_env, shared_site

from servers import ollama_fake, openai_fake
from servers.ollama_fake import OllamaFake
from servers.openai_fake import OpenAIFake

pytestmark = pytest.mark.timeout(300)
KEY = openai_fake.DEFAULT_KEY


@pytest.fixture(scope="module")
def ai(tmp_path_factory: pytest.TempPathFactory):
    from erp_plugins_core._sandbox import sandbox_available

    why = sandbox_available()
    if why is not None:
        pytest.fail(f"the sandbox cannot start here: {why}")
    tmp = tmp_path_factory.mktemp("ai")
    tmp.chmod(0o755)
    with OllamaFake() as ollama, OpenAIFake() as oai:
        env = server_env(shared_site(), tmp, TEST_OPENAI_KEY=KEY)
        state = str(tmp / "state.db")
        server = Server(env, state, tmp / "serve.log")
        tokens = {"acme": make_token(env, state, "--tenant", "acme", "--scope", "admin")["token"],
                  "globex": make_token(env, state, "--tenant", "globex", "--scope", "admin")["token"],
                  "platform": make_token(env, state, "--platform")["token"]}
        with httpx.Client(base_url=server.url, headers=bearer(tokens["acme"]), timeout=60) as c:
            r = c.put("/v1/tenants/acme/plugins/local_llm_provider", json={
                "config": {"host": ollama.url, "model": "llama3.2", "timeout": 5}, "priority": 1})
            assert r.status_code == 200, r.text
            r = c.put("/v1/tenants/acme/plugins/openai_provider", json={
                "config": {"api_key": "env:TEST_OPENAI_KEY", "base_url": oai.url, "model": "gpt-4o-mini",
                           "max_retries": 0, "timeout": 5}, "priority": 2})
            assert r.status_code == 200, r.text
            # a business plugin implementing ai_request, first in priority: not an OpenAI model, never asked
            r = c.put("/v1/tenants/acme/plugins/web_tool", json={
                "config": {"api_key": "env:WEB_TOOL_KEY"}, "trust": True, "priority": 0})
            assert r.status_code == 200, r.text
        with httpx.Client(base_url=server.url, headers=bearer(tokens["globex"]), timeout=60) as c:
            r = c.put("/v1/tenants/globex/plugins/openai_provider", json={
                "config": {"api_key": "env:TEST_OPENAI_KEY", "base_url": oai.url, "model": "gpt-4o-mini",
                           "max_retries": 0, "timeout": 5}})
            assert r.status_code == 200, r.text
        yield server, tokens, ollama, oai
        server.stop()


def client(server: Server, token: str, **kw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1/openai", api_key=token, max_retries=0, timeout=30, **kw)


async def test_models_are_the_tenants_providers_in_priority_order(ai) -> None:
    server, tokens, _, _ = ai
    async with client(server, tokens["acme"]) as c:
        models = [m.id async for m in c.models.list()]
    assert models == ["local_llm_provider", "openai_provider"]
    async with client(server, tokens["globex"]) as c:
        assert [m.id async for m in c.models.list()] == ["openai_provider"]


async def test_chat_completion_with_usage(ai) -> None:
    server, tokens, ollama, _ = ai
    async with client(server, tokens["acme"]) as c:
        out = await c.chat.completions.create(model="any", messages=[
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "invoice 42"}])
    assert out.choices[0].message.content == ollama_fake.answer_for("invoice 42")
    assert out.choices[0].finish_reason == "stop" and out.model == "any"
    assert out.usage is not None and out.usage.prompt_tokens > 0 and out.usage.completion_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert ollama.last("/api/chat").body["messages"][0] == {"role": "system", "content": "be brief"}


async def test_fallback_to_the_next_provider(ai) -> None:
    server, tokens, ollama, oai = ai
    ollama.fail(503, "overloaded", times=1)
    async with client(server, tokens["acme"]) as c:
        out = await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "q fallback"}])
    assert out.choices[0].message.content == openai_fake.answer_for("q fallback")


async def test_streaming_in_openais_format(ai) -> None:
    server, tokens, _, _ = ai
    async with client(server, tokens["acme"]) as c:
        stream = await c.chat.completions.create(model="m", stream=True,
                                                 messages=[{"role": "user", "content": "one two three"}])
        parts = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices[0].delta.content]
    answer = ollama_fake.answer_for("one two three")
    assert parts == ollama_fake.chunks_for(answer) and len(parts) > 1
    async with httpx.AsyncClient(timeout=30) as raw:
        r = await raw.post(f"{server.url}/v1/openai/chat/completions", headers=bearer(tokens["acme"]),
                           json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "a b"}]})
    lines = [line for line in r.text.splitlines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[0]["object"] == "chat.completion.chunk" and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_embeddings_float_and_base64(ai) -> None:
    server, tokens, _, _ = ai
    async with client(server, tokens["acme"]) as c:
        out = await c.embeddings.create(model="m", input=["alpha", "beta"])  # the SDK asks for base64
        plain = await c.embeddings.create(model="m", input="alpha", encoding_format="float")
    assert [d.index for d in out.data] == [0, 1]
    for got, text in zip(out.data, ["alpha", "beta"], strict=True):
        assert got.embedding == pytest.approx(ollama_fake.embedding_for(text), rel=1e-6)
    assert plain.data[0].embedding == pytest.approx(ollama_fake.embedding_for("alpha"))
    assert out.usage is not None and out.usage.prompt_tokens > 0


async def test_errors_reach_the_sdk_with_their_message(ai) -> None:
    server, tokens, ollama, oai = ai
    async with client(server, "erp_tok_0123456789abcdef_" + "0" * 64) as c:
        with pytest.raises(openai.AuthenticationError, match="invalid token"):
            await c.models.list()
    async with client(server, tokens["acme"], default_headers={"ERP-Tenant": "globex"}) as c:
        with pytest.raises(openai.PermissionDeniedError, match="another tenant"):
            await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    async with client(server, tokens["platform"]) as c:
        with pytest.raises(openai.BadRequestError, match="ERP-Tenant"):
            await c.models.list()
    async with client(server, tokens["platform"], default_headers={"ERP-Tenant": "globex"}) as c:
        assert [m.id async for m in c.models.list()] == ["openai_provider"]
    async with client(server, tokens["acme"]) as c:
        with pytest.raises(openai.UnprocessableEntityError, match="last message must have the role user"):
            await c.chat.completions.create(model="m", messages=[{"role": "assistant", "content": "x"}])
        ollama.fail(503, "overloaded", times=1)
        oai.fail(503, times=1)
        with pytest.raises(openai.APIStatusError) as info:
            await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert info.value.status_code == 502 and "local_llm_provider" in str(info.value)
        assert KEY not in str(info.value)
    assert KEY not in server.log()
