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
