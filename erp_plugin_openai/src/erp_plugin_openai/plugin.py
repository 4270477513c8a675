"""OpenAIProvider: the `openai_provider` plugin, answering ai_request, ai_stream and ai_embedding with `AsyncOpenAI`.

Retries and timeouts are the SDK's own (`max_retries`, `timeout` config keys); every SDK exception leaves this
module as one of the host's provider errors (see `_errors`).
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import openai

from erp_plugins_core import (
    AIProviderPlugin,
    BadRequestError,
    ChatRequest,
    ConfigError,
    LifecycleError,
    ModelNotFoundError,
)

from ._errors import display_url, map_error, scrub
from ._rehearsal import rehearse

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: Defaults of the optional config keys; equal to plugin.yaml's (a test checks).
DEFAULTS: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "temperature": 0.7,
    "timeout": 30,
    "max_retries": 2,
    "embedding_model": "text-embedding-3-small",
}
CONFIG_KEYS = frozenset({*DEFAULTS, "api_key", "max_tokens", "base_url", "organization"})
HEALTH_TIMEOUT = 10.0
#: One TLS context for every client of this process, built when the module is imported: loading the system's CA
#: certificates takes ≈ 50 ms, which each tenant's `initialize` would pay again, and a sandboxed worker forked from
#: the plugin's template (erp-plugins-core) inherits it ready. Verification is the SDK's default (system CAs).
TLS_CONTEXT = ssl.create_default_context()
_MAX_LISTED = 20


@dataclass(frozen=True)
class Settings:
    """The plugin's config, checked and with defaults applied. The key never appears in its repr."""

    api_key: str = field(repr=False)
    model: str
    temperature: float
    max_tokens: int | None
    base_url: str
    organization: str | None
    timeout: float
    max_retries: int
    embedding_model: str

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        """Check `config` (normally already validated by the host against plugin.yaml); ConfigError if wrong."""
        unknown = sorted(set(config) - CONFIG_KEYS)
        if unknown:
            raise ConfigError(f"openai_provider: unknown config key(s) {', '.join(unknown)}; "
                              f"allowed: {', '.join(sorted(CONFIG_KEYS))}")
        merged = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
        api_key = merged.get("api_key")
        if not isinstance(api_key, str) or not api_key:
            raise ConfigError("openai_provider: api_key is required; pass --config api_key=env:OPENAI_API_KEY")

        def text(key: str, required: bool = True) -> str | None:
            value = merged.get(key)
            if value is None and not required:
                return None
            if not isinstance(value, str) or not value:
                raise ConfigError(f"openai_provider: {key} must be a non-empty string, got {value!r}")
            return value

        def number(key: str, low: float, high: float, *, integer: bool = False, low_open: bool = False) -> Any:
            value = merged.get(key)
            kind = int if integer else (int, float)
            ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (value > low if low_open else value >= low) and value <= high
            if not ok:
                what = "an integer" if integer else "a number"
                bound = f"> {low:g}" if low_open else f">= {low:g}"
                upper = f" and <= {high:g}" if math.isfinite(high) else ""
                raise ConfigError(f"openai_provider: {key} must be {what} {bound}{upper}, got {value!r}")
            return value

        return cls(
            api_key=api_key,
            model=text("model") or "",
            temperature=float(number("temperature", 0, 2)),
            max_tokens=number("max_tokens", 1, math.inf, integer=True) if "max_tokens" in merged else None,
            base_url=(text("base_url", required=False) or DEFAULT_BASE_URL).rstrip("/"),
            organization=text("organization", required=False),
            timeout=float(number("timeout", 0, math.inf, low_open=True)),
            max_retries=int(number("max_retries", 0, 100, integer=True)),
            embedding_model=text("embedding_model") or "",
        )


class OpenAIProvider(AIProviderPlugin):
    """AI provider backed by OpenAI's chat completions and embeddings APIs (or any compatible server)."""

    def __init__(self) -> None:
        self.config: dict[str, Any] = {}
        self.context = None
        self.settings: Settings | None = None
        self._client: openai.AsyncOpenAI | None = None
        self.offered_models: tuple[str, ...] = ()

    def __repr__(self) -> str:
        where = display_url(self.settings.base_url) if self.settings else "not initialized"
        return f"OpenAIProvider({where})"

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def initialize(self, config: dict[str, Any], context: Any) -> bool:
        """Build the client from the config and test the connection: the configured model must be offered."""
        self.config = dict(config)
        self.context = context
        self.settings = Settings.from_config(config)
        s = self.settings
        self._client = openai.AsyncOpenAI(
            api_key=s.api_key,
            base_url=s.base_url,
            organization=s.organization,
            timeout=s.timeout,
            max_retries=s.max_retries,
            http_client=self._http_client(),
        )
        try:
            await self.validate_model_config(self.config)
        except BaseException:
            await self.cleanup()
            raise
        if s.embedding_model not in self.offered_models:
            self._log("warning", f"embedding_model {s.embedding_model!r} is not offered by "
                      f"{display_url(s.base_url)}; ai_embedding will fail until it is")
        return True

    async def cleanup(self) -> bool:
        """Close the SDK's HTTP connections."""
        if self._client is not None:
            await self._client.close()
            self._client = None
        return True

    async def health_check(self) -> dict[str, Any]:
        """Healthy when the server lists models (within 10 s, no retries) and the configured model is among them."""
        if self._client is None or self.settings is None:
            return {"healthy": False, "detail": "not initialized"}
        s = self.settings
        timeout = min(s.timeout, HEALTH_TIMEOUT)
        try:
            page = await self._client.with_options(timeout=timeout, max_retries=0).models.list()
        except Exception as exc:  # a health check reports, it does not raise
            return {"healthy": False, "detail": str(self._error(exc, timeout=timeout))}
        offered = [m.id for m in page.data]
        if s.model not in offered:
            return {"healthy": False, "detail": self._not_offered(s.model, offered)}
        return {"healthy": True, "detail": f"{display_url(s.base_url)} offers {s.model} ({len(offered)} models)"}

    # --- AIProviderPlugin -----------------------------------------------------------------------------------

    async def validate_model_config(self, config: dict[str, Any]) -> bool:
        """List the server's models; raise ModelNotFoundError naming the offered ones if `config`'s model is not."""
        client, s = self._ready()
        model = config.get("model") or s.model
        try:
            page = await client.models.list()
        except Exception as exc:
            raise self._error(exc) from None
        self.offered_models = tuple(m.id for m in page.data)
        if model not in self.offered_models:
            raise ModelNotFoundError(self._not_offered(model, self.offered_models))
        return True

    async def generate_response(self, prompt: str, context: dict[str, Any] | None = None) -> str:
        """The model's complete answer to `prompt` (context may add `system`, `messages`, `temperature`,
        `max_tokens`)."""
        client, s = self._ready()
        params = self._chat_params(prompt, context or {})
        try:
            completion = await client.chat.completions.create(**params)
        except Exception as exc:
            raise self._error(exc, model=params["model"]) from None
        if completion.usage is not None:
            self._usage(completion.usage.prompt_tokens, completion.usage.completion_tokens,
                        completion.usage.total_tokens)
        if not completion.choices:
            return ""
        return completion.choices[0].message.content or ""

    async def generate_streaming_response(
        self, prompt: str, context: dict[str, Any] | None = None
    ) -> AsyncIterator[str]:
        """Yield the answer's content deltas as the server sends them; usage is recorded from the final event."""
        client, s = self._ready()
        params = self._chat_params(prompt, context or {})
        try:
            stream = await client.chat.completions.create(
                **params, stream=True, stream_options={"include_usage": True}
            )
            async with stream:
                async for chunk in stream:
                    if chunk.usage is not None:
                        self._usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens,
                                    chunk.usage.total_tokens)
                    for choice in chunk.choices:
                        if choice.delta is not None and choice.delta.content:
                            yield choice.delta.content
        except Exception as exc:
            raise self._error(exc, model=params["model"]) from None

    async def generate_embeddings(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order, from the embedding model (the SDK fetches them base64-encoded)."""
        client, s = self._ready()
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise BadRequestError("ai_embedding: texts must be a list of strings")
        if not texts:
            return []
        try:
            response = await client.embeddings.create(model=s.embedding_model, input=list(texts))
        except Exception as exc:
            error = self._error(exc, model=s.embedding_model)
            if isinstance(error, ModelNotFoundError) and self.offered_models:
                error = ModelNotFoundError(self._not_offered(s.embedding_model, self.offered_models, "embedding_model"))
            raise error from None
        if response.usage is not None:
            self._usage(response.usage.prompt_tokens, None, response.usage.total_tokens)
        vectors = sorted(response.data, key=lambda d: d.index)
        return [[float(x) for x in d.embedding] for d in vectors]

    # --- helpers --------------------------------------------------------------------------------------------

    def _http_client(self) -> Any:
        """The SDK's own async HTTP client, verifying with the module's TLS context (`_rehearsal` swaps it)."""
        return openai.DefaultAsyncHttpxClient(verify=TLS_CONTEXT)

    def _ready(self) -> tuple[openai.AsyncOpenAI, Settings]:
        if self._client is None or self.settings is None:
            raise LifecycleError("openai_provider is not initialized (or was cleaned up); enable it first")
        return self._client, self.settings

    def _chat_params(self, prompt: str, context: Mapping[str, Any]) -> dict[str, Any]:
        s = self.settings
        assert s is not None
        chat = ChatRequest.from_hook(prompt, context, temperature=s.temperature, max_tokens=s.max_tokens)
        params: dict[str, Any] = {"model": s.model, "messages": chat.messages, "temperature": chat.temperature}
        if chat.max_tokens is not None:
            params["max_tokens"] = chat.max_tokens
        return params

    def _error(self, exc: BaseException, *, model: str | None = None, timeout: float | None = None) -> BaseException:
        s = self.settings
        assert s is not None
        return map_error(exc, base_url=s.base_url, model=model, secrets=(s.api_key,),
                         timeout=s.timeout if timeout is None else timeout)

    def _not_offered(self, model: str, offered: Any, key: str = "model") -> str:
        s = self.settings
        assert s is not None
        names = sorted(offered)
        shown = ", ".join(names[:_MAX_LISTED]) + (f", … ({len(names) - _MAX_LISTED} more)"
                                                   if len(names) > _MAX_LISTED else "")
        where = display_url(s.base_url)
        if not names:
            return f"{key} {model!r} is not offered by {where}: it lists no models"
        return f"{key} {model!r} is not offered by {where}; offered: {shown}"

    def _usage(self, prompt: int | None, completion: int | None, total: int | None) -> None:
        if self.context is None:
            return
        counts = {k: v for k, v in (("prompt_tokens", prompt), ("completion_tokens", completion),
                                    ("total_tokens", total)) if isinstance(v, int)}
        if counts:
            self.context.record_usage(**counts)

    def _log(self, level: str, message: str) -> None:
        if self.context is not None:
            s = self.settings
            self.context.log(level, scrub(message, (s.api_key,) if s else ()))


#: What the SDK builds lazily is built now, once per plugin and before any tenant exists (see `_rehearsal`).
REHEARSED = rehearse(OpenAIProvider)
