"""OAuth scopes: the defaults, short-name expansion, and which scopes each hook can work with."""

from __future__ import annotations

from collections.abc import Iterable

AUTH_PREFIX = "https://www.googleapis.com/auth/"

GMAIL_SEND = AUTH_PREFIX + "gmail.send"
DRIVE_FILE = AUTH_PREFIX + "drive.file"
CALENDAR = AUTH_PREFIX + "calendar"

#: What a tenant gets when its config names no scopes: enough for every hook, and no more.
DEFAULT_SCOPES: tuple[str, ...] = (GMAIL_SEND, DRIVE_FILE, CALENDAR)

#: For each hook, the scopes any one of which lets it work; the first is the one we ask users to add.
HOOK_SCOPES: dict[str, tuple[str, ...]] = {
    "send_email": (
        GMAIL_SEND,
        AUTH_PREFIX + "gmail.compose",
        AUTH_PREFIX + "gmail.modify",
        "https://mail.google.com/",
    ),
    "upload_file": (DRIVE_FILE, AUTH_PREFIX + "drive"),
    "create_calendar_event": (CALENDAR, AUTH_PREFIX + "calendar.events"),
    "list_calendar_events": (
        CALENDAR,
        AUTH_PREFIX + "calendar.events",
        AUTH_PREFIX + "calendar.readonly",
        AUTH_PREFIX + "calendar.events.readonly",
    ),
}

#: The permission of the contract that enables each hook (so health can judge only the granted hooks).
HOOK_PERMISSIONS: dict[str, str] = {
    "send_email": "email.send",
    "upload_file": "files.upload",
    "create_calendar_event": "calendar.write",
    "list_calendar_events": "calendar.read",
}


def expand(scope: str) -> str:
    """A full scope URL from a full URL or a short name such as `gmail.send`."""
    scope = scope.strip()
    if scope.startswith(("https://", "http://")):
        return scope
    return AUTH_PREFIX + scope


def missing_for(hook: str, scopes: Iterable[str]) -> str | None:
    """The scope to add so that `hook` works with `scopes`, or None when they already cover it."""
    have = set(scopes)
    wanted = HOOK_SCOPES[hook]
    return None if have.intersection(wanted) else wanted[0]
