"""The contract's hooks as pluggy hookspecs, with the permission each one needs.

This module is the single source of truth for hook names, their keyword arguments and permissions;
`docs/hooks.md` is generated from it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pluggy

PROJECT = "erp_plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class HookSpecs:
    """Every hook ERP code may call. Implementations may be plain or async functions."""

    @hookspec
    def ai_request(self, prompt: str, context: dict) -> str:  # type: ignore[empty-body]
        """Generate a complete answer to `prompt`."""

    @hookspec
    def ai_stream(self, prompt: str, context: dict) -> AsyncIterator[str]:  # type: ignore[empty-body]
        """Generate an answer to `prompt`, yielded chunk by chunk."""

    @hookspec
    def ai_embedding(self, texts: list[str]) -> list[list[float]]:  # type: ignore[empty-body]
        """Return one embedding vector per text."""

    @hookspec
    def send_email(self, to: str, subject: str, body: str, attachments: list[str]) -> str:  # type: ignore[empty-body]
        """Send a mail with files attached (paths read by the host); return the message id."""

    @hookspec
    def upload_file(self, file_path: str, folder_id: str | None) -> str:  # type: ignore[empty-body]
        """Upload a file (path read by the host) into a folder; return the file id."""

    @hookspec
    def create_calendar_event(self, calendar_id: str, event: dict) -> str:  # type: ignore[empty-body]
        """Create an event in a calendar; return the event id."""

    @hookspec
    def list_calendar_events(self, calendar_id: str, time_min: str | None, time_max: str | None) -> list[dict]:  # type: ignore[empty-body]
        """List a calendar's events, optionally within [time_min, time_max)."""

    @hookspec
    def on_event(self, event_type: str, data: dict) -> None:
        """Receive an event emitted by another plugin of the same tenant."""

    @hookspec
    def send_notification(self, channel: str, recipient: str, subject: str, message: str, data: dict) -> str:  # type: ignore[empty-body]
        """Deliver a notification (SMS, chat, push, ...) on `channel` to `recipient`; return the delivery id."""

    @hookspec
    def workflow_step(self, workflow: str, step: str, payload: dict) -> dict:  # type: ignore[empty-body]
        """Run one step of a workflow on `payload`; return the step's output (the next step's payload)."""

    @hookspec
    def ui_components(self, placement: str, context: dict) -> list[dict]:  # type: ignore[empty-body]
        """UI components (data only, no HTML or script) to show at `placement`; each is checked against
        the core's component schema (kinds menu_item, action, panel)."""


@dataclass(frozen=True, slots=True)
class HookInfo:
    """What the host needs to know about one hook besides its signature."""

    name: str
    permission: str | None
    argnames: tuple[str, ...]
    streaming: bool = False
    file_args: tuple[str, ...] = ()  # arguments that name host files the plugin may read during the call
    defaults: tuple[tuple[str, object], ...] = ()  # optional arguments and their default values
    #: A hook a plugin provides (`provides_hooks`): its providing plugin, argument types, `firstresult`, result type.
    provider: str | None = None
    types: tuple[tuple[str, tuple[type, ...]], ...] = ()  # per argument, its accepted types (core hooks: ARG_TYPES)
    firstresult: bool = False
    returns: str = ""
    description: str = ""


HOOKS: dict[str, HookInfo] = {
    h.name: h
    for h in (
        HookInfo("ai_request", "ai.generate", ("prompt", "context"), defaults=(("context", {}),)),
        HookInfo("ai_stream", "ai.generate", ("prompt", "context"), streaming=True, defaults=(("context", {}),)),
        HookInfo("ai_embedding", "ai.embeddings", ("texts",)),
        HookInfo(
            "send_email",
            "email.send",
            ("to", "subject", "body", "attachments"),
            file_args=("attachments",),
            defaults=(("attachments", []),),
        ),
        HookInfo(
            "upload_file",
            "files.upload",
            ("file_path", "folder_id"),
            file_args=("file_path",),
            defaults=(("folder_id", None),),
        ),
        HookInfo("create_calendar_event", "calendar.write", ("calendar_id", "event")),
        HookInfo(
            "list_calendar_events",
            "calendar.read",
            ("calendar_id", "time_min", "time_max"),
            defaults=(("time_min", None), ("time_max", None)),
        ),
        HookInfo("on_event", None, ("event_type", "data")),
        HookInfo(
            "send_notification",
            "notifications.send",
            ("channel", "recipient", "subject", "message", "data"),
            defaults=(("subject", ""), ("data", {})),
        ),
        HookInfo("workflow_step", "workflow.execute", ("workflow", "step", "payload"), defaults=(("payload", {}),)),
        HookInfo("ui_components", "ui.extend", ("placement", "context"), defaults=(("context", {}),)),
    )
}

_NONE = type(None)

#: The type each hook argument must have; checked before dispatch so callers get a clear error.
ARG_TYPES: dict[str, tuple[type, ...]] = {
    "prompt": (str,),
    "context": (dict,),
    "texts": (list,),
    "to": (str,),
    "subject": (str,),
    "body": (str,),
    "attachments": (list,),
    "file_path": (str,),
    "folder_id": (str, _NONE),
    "calendar_id": (str,),
    "event": (dict,),
    "time_min": (str, _NONE),
    "time_max": (str, _NONE),
    "event_type": (str,),
    "data": (dict,),
    "channel": (str,),
    "recipient": (str,),
    "message": (str,),
    "workflow": (str,),
    "step": (str,),
    "payload": (dict,),
    "placement": (str,),
}
#: Arguments that are lists whose items must be strings.
STR_LISTS = frozenset({"texts", "attachments"})


#: JSON types a provided hook's arguments and result may have, by the name a manifest uses.
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (float, int), "bool": (bool,), "dict": (dict,), "list": (list,),
}

#: Hooks that plugins provide (`provides_hooks`), as catalogs of this process registered them.
_provided: dict[str, HookInfo] = {}


def parse_type(text: str) -> tuple[type, ...]:
    """The accepted Python types of a manifest type such as `str`, `int | None`; ValueError otherwise."""
    parts = [p.strip() for p in text.split("|")]
    nullable = parts[-1] == "None" and len(parts) == 2
    base = parts[0] if nullable or len(parts) == 1 else ""
    if base not in JSON_TYPES:
        raise ValueError(f"{text!r} is not a type; use one of {', '.join(JSON_TYPES)}, optionally with | None")
    return JSON_TYPES[base] + ((_NONE,) if nullable else ())


def set_provided(infos: dict[str, HookInfo]) -> None:
    """Register hooks plugins provide. Added to those registered before, so that two catalogs in one process (a
    host's and the CLI's) never unregister each other's; a catalog answers for its own plugins (`Catalog.hook`)."""
    _provided.update(infos)


def hook_info(name: str) -> HookInfo | None:
    """A core hook's or a provided hook's info, or None when no hook has that name."""
    return HOOKS.get(name) or _provided.get(name)


def hook_names() -> list[str]:
    """Every hook name: the core's, then those plugins provide."""
    return [*HOOKS, *_provided]


def arg_types(info: HookInfo, name: str) -> tuple[type, ...]:
    """The types argument `name` of the hook may have."""
    if info.provider is not None:
        return dict(info.types)[name]
    return ARG_TYPES[name]


def _spec_template(self):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN202
    """The body every provided hookspec shares; its code gets each hook's own argument names."""


def provided_specs(infos: list[HookInfo]) -> type:
    """A pluggy hookspec class for provided hooks, built from their manifests alone (nothing is imported).

    Each spec is the empty template function with its code's argument names replaced by the hook's, which is
    all pluggy reads of a spec.
    """
    import types

    namespace: dict[str, object] = {"__doc__": "Hooks provided by plugins (provides_hooks)."}
    for info in infos:
        qualname = f"ProvidedHookSpecs.{info.name}"
        code = _spec_template.__code__.replace(
            co_argcount=1 + len(info.argnames), co_varnames=("self", *info.argnames),
            co_nlocals=1 + len(info.argnames), co_name=info.name, co_qualname=qualname,
        )
        fn = types.FunctionType(code, {}, info.name)
        fn.__qualname__ = qualname
        fn.__doc__ = info.description
        namespace[info.name] = hookspec(firstresult=info.firstresult)(fn)
    return type("ProvidedHookSpecs", (), namespace)
