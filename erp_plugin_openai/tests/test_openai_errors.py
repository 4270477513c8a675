"""Every failure of the OpenAI service reaches the caller as one of the host's provider errors, key-free."""

from __future__ import annotations

import socket
import time

import pytest
from openai_testkit import make_context

from erp_plugin_openai._errors import display_url, retry_after_seconds, scrub
from erp_plugin_openai.plugin import OpenAIProvider
from erp_plugins_core._errors import (
    AuthenticationError,
    BadRequestError,
    ProviderTimeout,
    RateLimitError,
    UnavailableError,
)
from tests.servers.openai_fake import OpenAIFake

CHAT = "/v1/chat/completions"
WRONG_KEY = "sk-wrong-key-that-must-never-leak-42"


def assert_key_free(err: BaseException, key: str) -> None:
    """The key is in none of the texts an error can reach a user or a log through."""
    for text in (str(err), repr(err), *map(str, err.args)):
        assert key not in text
    assert err.__cause__ is None and err.__suppress_context__ is True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_wrong_key_at_initialize(fake: OpenAIFake) -> None:
    config = {"api_key": WRONG_KEY, "base_url": fake.url, "max_retries": 0}
    plugin = OpenAIProvider()
    with pytest.raises(AuthenticationError) as info:
        await plugin.initialize(config, make_context(config))
    assert_key_free(info.value, WRONG_KEY)
    assert "refused the API key (HTTP 401 invalid_api_key)" in str(info.value)
    assert fake.address in str(info.value)
    assert fake.count("/v1/models", "GET") == 1


async def test_key_revoked_while_running(provider: OpenAIProvider, fake: OpenAIFake) -> None:
    key = fake.api_key
    fake.api_key = "sk-rotated-on-the-server"
    for call in (provider.generate_response("x", {}), provider.generate_embeddings(["x"])):
        with pytest.raises(AuthenticationError) as info:
            await call
        assert_key_free(info.value, key)
    with pytest.raises(AuthenticationError) as info:
        [c async for c in provider.generate_streaming_response("x", {})]
    assert_key_free(info.value, key)
    health = await provider.health_check()
    assert health["healthy"] is False and key not in health["detail"] and "401" in health["detail"]


async def test_the_fake_really_echoes_the_key(fake: OpenAIFake) -> None:
    """Guard for the tests above: the raw SDK error does contain the key, so the plugin's scrubbing is tested."""
    import openai

    client = openai.AsyncOpenAI(api_key=WRONG_KEY, base_url=fake.url, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        await client.models.list()
    assert WRONG_KEY in str(info.value)
    await client.close()


async def test_rate_limit_carries_retry_after(provider: OpenAIProvider, fake: OpenAIFake) -> None:
    fake.fail(429, retry_after="7")
    with pytest.raises(RateLimitError) as info:
        await provider.generate_response("x", {})
    assert info.value.retry_after == 7.0
    assert info.value.fallback is True
    assert "HTTP 429 rate_limit_exceeded" in str(info.value) and "retry after 7 s" in str(info.value)
    fake.fail(429)
    with pytest.raises(RateLimitError) as info:
        await provider.generate_embeddings(["x"])
    assert info.value.retry_after is None


def test_retry_after_forms() -> None:
    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_seconds({"retry-after": "20"}) == 20.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 27 <= retry_after_seconds({"retry-after": date}) <= 31
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


async def test_server_error_is_unavailable(provider: OpenAIProvider, fake: OpenAIFake) -> None:
    fake.fail(500)
    with pytest.raises(UnavailableError) as info:
        await provider.generate_response("x", {})
    assert f"OpenAI API at {fake.url} failed (HTTP 500 server_error)" in str(info.value)
    fake.fail(503)
    with pytest.raises(UnavailableError, match="HTTP 503"):
        [c async for c in provider.generate_streaming_response("x", {})]


async def test_bad_request_from_the_server(provider: OpenAIProvider, fake: OpenAIFake) -> None:
    fake.fail(400)
    with pytest.raises(BadRequestError, match=r"rejected the request \(HTTP 400 invalid_request\): Invalid request"):
        await provider.generate_response("x", {})


async def test_connection_refused_names_the_address() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    config = {"api_key": "sk-anything-at-all", "base_url": url, "max_retries": 0}
    plugin = OpenAIProvider()
    with pytest.raises(UnavailableError) as info:
        await plugin.initialize(config, make_context(config))
    assert f"cannot reach the OpenAI API at {url}" in str(info.value)
    assert info.value.fallback is True


async def test_server_gone_after_start(provider: OpenAIProvider, fake: OpenAIFake) -> None:
    url = fake.url
    fake.stop()
    with pytest.raises(UnavailableError, match=f"cannot reach the OpenAI API at {url}"):
        await provider.generate_response("x", {})


async def test_slow_server_is_a_timeout(provider_factory, fake: OpenAIFake) -> None:
    plugin = await provider_factory(timeout=0.3)
    fake.faults.delay = 2
    started = time.perf_counter()
    with pytest.raises(ProviderTimeout, match=r"did not answer within 0.3 s"):
        await plugin.generate_response("x", {})
    assert time.perf_counter() - started < 1.5
    with pytest.raises(ProviderTimeout):
        [c async for c in plugin.generate_streaming_response("x", {})]


async def test_stream_broken_after_first_chunk(provider: OpenAIProvider, fake: OpenAIFake) -> None:
    fake.faults.break_stream = True
    got: list[str] = []
    with pytest.raises(UnavailableError, match=f"OpenAI API at {fake.url}"):
        async for chunk in provider.generate_streaming_response("one two three", {}):
            got.append(chunk)
    assert got == ["echo: "]


def test_display_and_scrub() -> None:
    assert display_url("https://user:pw@example.com:8443/v1") == "https://example.com:8443/v1"
    assert display_url("http://127.0.0.1:9/v1") == "http://127.0.0.1:9/v1"
    assert scrub("key sk-abc\nhere sk-abc", ["sk-abc"]) == "key *** here ***"
    assert len(scrub("x" * 1000, [])) == 300


@pytest.mark.parametrize("library", ["httpx", "httpx2"])
def test_raw_http_library_errors_are_mapped(library: str) -> None:
    """Older SDKs let stream-reading errors of httpx (httpx2 in newer ones) through unwrapped; they still become
    provider errors. Each library is tested where the installed SDK brought it."""
    httpx = pytest.importorskip(library)

    from erp_plugin_openai._errors import http_error_kind, map_error

    assert http_error_kind(httpx.ReadTimeout("slow")) == "timeout"
    assert http_error_kind(httpx.RemoteProtocolError("peer closed")) == "transport"
    assert http_error_kind(ValueError("x")) is None
    assert isinstance(map_error(httpx.ReadTimeout("slow"), base_url="http://h/v1", timeout=3), ProviderTimeout)
    broke = map_error(httpx.RemoteProtocolError("peer closed"), base_url="http://h/v1")
    assert isinstance(broke, UnavailableError) and "connection to the OpenAI API at http://h/v1 broke" in str(broke)
    other = ValueError("not ours")
    assert map_error(other, base_url="http://h/v1") is other
