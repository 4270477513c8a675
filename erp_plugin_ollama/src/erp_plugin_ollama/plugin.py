"""OllamaProvider: the `local_llm_provider` plugin, answering ai_request, ai_stream and ai_embedding with
`ollama.AsyncClient`.

Generation uses /api/chat (so a system prompt and earlier turns travel as messages), embeddings /api/embed,
and the connection test /api/tags. Every SDK exception leaves this module as a host provider error (`_errors`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import ollama

from erp_plugins_core import (
    AIProviderPlugin,
    BadRequestError,
    ChatRequest,
    ConfigError,
    LifecycleError,
    ModelNotFoundError,
)

from ._errors import display_url, map_error

#: Defaults of the optional config keys; equal to plugin.yaml's (a test checks).
DEFAULTS: dict[str, Any] = {
    "host": "http://127.0.0.1:11434",
    "temperature": 0.7,
    "timeout": 120,
}
CONFIG_KEYS = frozenset({*DEFAULTS, "model", "context_length", "embedding_model", "keep_alive"})
HEALTH_TIMEOUT = 10.0
_MAX_LISTED = 20


def canonical(model: str) -> str:
    """Ollama's naming: a model without a tag is `name:latest`."""
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


def is_offered(model: str, offered: Iterable[str]) -> bool:
    """Whether `model` names one of `offered`, `:latest` being implied when no tag is given."""
    return canonical(model) in {canonical(m) for m in offered}


@dataclass(frozen=True)
class Settings:
    """The plugin's config, checked and with defaults applied."""

    model: str
    host: str
    temperature: float
    context_length: int | None
    embedding_model: str
    keep_alive: str | float | None
    timeout: float

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        """Check `config` (normally already validated by the host against plugin.yaml); ConfigError if wrong."""
        unknown = sorted(set(config) - CONFIG_KEYS)
        if unknown:
            raise ConfigError(f"local_llm_provider: unknown config key(s) {', '.join(unknown)}; "
                              f"allowed: {', '.join(sorted(CONFIG_KEYS))}")
        merged = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}

        def text(key: str) -> str:
            value = merged.get(key)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"local_llm_provider: {key} must be a non-empty string, got {value!r}")
            return value

        if not merged.get("model"):
            raise ConfigError("local_llm_provider: model is required, e.g. --config model=llama3.2 "
                              "(see `ollama list` on the server)")
        temperature = merged["temperature"]
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise ConfigError(f"local_llm_provider: temperature must be a number from 0 to 2, got {temperature!r}")
        timeout = merged["timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
            math.isfinite(timeout) and timeout > 0
        ):
            raise ConfigError(f"local_llm_provider: timeout must be a number of seconds > 0, got {timeout!r}")
        context_length = merged.get("context_length")
        if context_length is not None and (
            isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 1
        ):
            raise ConfigError(f"local_llm_provider: context_length must be an integer >= 1, got {context_length!r}")
        keep_alive = merged.get("keep_alive")
        if keep_alive is not None and (isinstance(keep_alive, bool) or not isinstance(keep_alive, (str, int, float))):
            raise ConfigError(f'local_llm_provider: keep_alive must be a duration like "5m" or seconds, '
                              f"got {keep_alive!r}")
        model = text("model")
        embedding_model = text("embedding_model") if "embedding_model" in merged else model
        return cls(
            model=model,
            host=text("host").rstrip("/"),
            temperature=float(temperature),
            context_length=context_length,
            embedding_model=embedding_model,
            keep_alive=keep_alive,
            timeout=float(timeout),
        )


class OllamaProvider(AIProviderPlugin):
    """AI provider backed by an Ollama server's chat and embed APIs."""

    def __init__(self) -> None:
        self.config: dict[str, Any] = {}
        self.context = None
        self.settings: Settings | None = None
        self._client: ollama.AsyncClient | None = None
        self.offered_models: tuple[str, ...] = ()

    def __repr__(self) -> str:
        where = display_url(self.settings.host) if self.settings else "not initialized"
        return f"OllamaProvider({where})"

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def initialize(self, config: dict[str, Any], context: Any) -> bool:
        """Build the client and test the connection: the configured model must be listed by /api/tags."""
        self.config = dict(config)
        self.context = context
        self.settings = s = Settings.from_config(config)
        self._client = ollama.AsyncClient(host=s.host, timeout=s.timeout)
        try:
            await self.validate_model_config(self.config)
        except BaseException:
            await self.cleanup()
            raise
        if not is_offered(s.embedding_model, self.offered_models):
            self._log("warning", f"embedding_model {s.embedding_model!r} is not on {display_url(s.host)}; "
                      "ai_embedding will fail until it is pulled")
        return True

    async def cleanup(self) -> bool:
        """Close the SDK's HTTP connections."""
        if self._client is not None:
            client, self._client = self._client, None
            close = getattr(client, "close", None)
            if close is not None:
                await close()
            else:  # ollama < 0.4.5 has no AsyncClient.close()
                await client._client.aclose()
        return True

    async def health_check(self) -> dict[str, Any]:
        """Healthy when /api/tags answers within 10 s and lists the configured model."""
        if self._client is None or self.settings is None:
            return {"healthy": False, "detail": "not initialized"}
        s = self.settings
        timeout = min(s.timeout, HEALTH_TIMEOUT)
        try:
            async with asyncio.timeout(timeout):
                listing = await self._client.list()
        except TimeoutError:
            return {"healthy": False, "detail": f"Ollama at {display_url(s.host)} did not list its models "
                                                f"within {timeout:g} s"}
        except Exception as exc:  # a health check reports, it does not raise
            return {"healthy": False, "detail": str(map_error(exc, host=s.host, timeout=timeout))}
        offered = [m.model for m in listing.models if m.model]
        if not is_offered(s.model, offered):
            return {"healthy": False, "detail": self._not_offered(s.model, offered)}
        return {"healthy": True, "detail": f"{display_url(s.host)} has {s.model} ({len(offered)} models)"}

    # --- AIProviderPlugin -----------------------------------------------------------------------------------

    async def validate_model_config(self, config: dict[str, Any]) -> bool:
        """List the server's models; raise ModelNotFoundError naming them if `config`'s model is not there."""
        client, s = self._ready()
        model = config.get("model") or s.model
        try:
            listing = await client.list()
        except Exception as exc:
            raise self._error(exc) from None
        self.offered_models = tuple(m.model for m in listing.models if m.model)
        if not is_offered(model, self.offered_models):
            raise ModelNotFoundError(self._not_offered(model, self.offered_models))
        return True

    async def generate_response(self, prompt: str, context: dict[str, Any] | None = None) -> str:
        """The model's complete answer to `prompt` (context may add `system`, `messages`, `temperature`,
        `max_tokens`)."""
        client, s = self._ready()
        params = self._chat_params(prompt, context or {})
        try:
            response = await client.chat(**params, stream=False)
        except Exception as exc:
            raise self._error(exc, model=s.model) from None
        self._usage(response.prompt_eval_count, response.eval_count)
        return response.message.content or ""

    async def generate_streaming_response(
        self, prompt: str, context: dict[str, Any] | None = None
    ) -> AsyncIterator[str]:
        """Yield the answer's pieces as the server streams them; usage comes from the final `done` line."""
        client, s = self._ready()
        params = self._chat_params(prompt, context or {})
        try:
            stream = await client.chat(**params, stream=True)
            try:
                async for part in stream:
                    if part.message is not None and part.message.content:
                        yield part.message.content
                    if part.done:
                        self._usage(part.prompt_eval_count, part.eval_count)
            finally:
                await stream.aclose()
        except Exception as exc:
            raise self._error(exc, model=s.model) from None

    async def generate_embeddings(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order, from /api/embed with the embedding model."""
        client, s = self._ready()
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise BadRequestError("ai_embedding: texts must be a list of strings")
        if not texts:
            return []
        kwargs: dict[str, Any] = {"model": s.embedding_model, "input": list(texts)}
        if s.keep_alive is not None:
            kwargs["keep_alive"] = s.keep_alive
        try:
            response = await client.embed(**kwargs)
        except Exception as exc:
            error = self._error(exc, model=s.embedding_model)
            if isinstance(error, ModelNotFoundError) and self.offered_models:
                error = ModelNotFoundError(self._not_offered(s.embedding_model, self.offered_models,
                                                             "embedding_model"))
            raise error from None
        self._usage(response.prompt_eval_count, None)
        return [[float(x) for x in vector] for vector in response.embeddings]

    # --- helpers --------------------------------------------------------------------------------------------

    def _ready(self) -> tuple[ollama.AsyncClient, Settings]:
        if self._client is None or self.settings is None:
            raise LifecycleError("local_llm_provider is not initialized (or was cleaned up); enable it first")
        return self._client, self.settings

    def _chat_params(self, prompt: str, context: Mapping[str, Any]) -> dict[str, Any]:
        s = self.settings
        assert s is not None
        chat = ChatRequest.from_hook(prompt, context, temperature=s.temperature)
        options: dict[str, Any] = {"temperature": chat.temperature}
        if s.context_length is not None:
            options["num_ctx"] = s.context_length
        if chat.max_tokens is not None:
            options["num_predict"] = chat.max_tokens
        params: dict[str, Any] = {"model": s.model, "messages": chat.messages, "options": options}
        if s.keep_alive is not None:
            params["keep_alive"] = s.keep_alive
        return params

    def _error(self, exc: BaseException, *, model: str | None = None) -> BaseException:
        s = self.settings
        assert s is not None
        return map_error(exc, host=s.host, model=model, timeout=s.timeout)

    def _not_offered(self, model: str, offered: Iterable[str], key: str = "model") -> str:
        s = self.settings
        assert s is not None
        names = sorted(offered)
        where = display_url(s.host)
        if not names:
            return f"{key} {model!r} is not on the Ollama server at {where}: it has no models; `ollama pull {model}`"
        shown = ", ".join(names[:_MAX_LISTED]) + (f", … ({len(names) - _MAX_LISTED} more)"
                                                   if len(names) > _MAX_LISTED else "")
        return f"{key} {model!r} is not on the Ollama server at {where}; offered: {shown}"

    def _usage(self, prompt: int | None, completion: int | None) -> None:
        if self.context is None:
            return
        counts = {k: v for k, v in (("prompt_tokens", prompt), ("completion_tokens", completion))
                  if isinstance(v, int)}
        if counts:
            counts["total_tokens"] = sum(counts.values())
            self.context.record_usage(**counts)

    def _log(self, level: str, message: str) -> None:
        if self.context is not None:
            self.context.log(level, message)
