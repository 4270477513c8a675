"""Checks of calendar input before it goes to Google, so a mistake gets a message naming the field."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from erp_plugins_core import BadRequestError

_EMAIL = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?$")


def _bad(field: str, problem: str) -> BadRequestError:
    return BadRequestError(f"create_calendar_event: event.{field}: {problem}")


@lru_cache(maxsize=1)
def _zones_known() -> bool:
    return bool(available_timezones())


def _zone(field: str, name: Any) -> ZoneInfo | None:
    if not isinstance(name, str) or not name:
        raise _bad(field, f"{name!r} is not a time zone name; use an IANA name like 'Europe/Berlin'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        if not _zones_known():  # no tz database here: Google will check the name
            return None
        raise _bad(field, f"unknown time zone {name!r}; use an IANA name like 'Europe/Berlin'") from None


def _moment(field: str, value: Any) -> tuple[str, date | datetime | None]:
    """('date'|'dateTime', comparable value) for an event's start or end; BadRequestError otherwise."""
    if not isinstance(value, dict):
        raise _bad(field, "missing or not an object; give {'dateTime': ..., 'timeZone': ...} or {'date': 'YYYY-MM-DD'}")
    has_date, has_dt = "date" in value, "dateTime" in value
    if has_date == has_dt:
        raise _bad(field, "give exactly one of 'date' (all-day, YYYY-MM-DD) or 'dateTime' (RFC 3339)")
    tz = _zone(f"{field}.timeZone", value["timeZone"]) if "timeZone" in value else None
    if has_date:
        raw = value["date"]
        if not isinstance(raw, str) or not _DATE.match(raw):
            raise _bad(f"{field}.date", f"{raw!r} is not a date like 2025-03-01")
        try:
            return "date", date.fromisoformat(raw)
        except ValueError:
            raise _bad(f"{field}.date", f"{raw!r} is not a real calendar date") from None
    raw = value["dateTime"]
    if not isinstance(raw, str) or not _DATETIME.match(raw):
        raise _bad(f"{field}.dateTime", f"{raw!r} is not an RFC 3339 date-time like 2025-03-01T09:30:00+01:00")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise _bad(f"{field}.dateTime", f"{raw!r} is not a real date-time") from None
    if moment.tzinfo is None:
        if "timeZone" not in value:
            raise _bad(field, f"dateTime {raw!r} has no UTC offset, so it needs 'timeZone' (e.g. 'Europe/Berlin')")
        if tz is None:
            return "dateTime", None  # cannot compare without a tz database; Google will
        moment = moment.replace(tzinfo=tz)
    return "dateTime", moment


def validate_event(event: Any) -> dict[str, Any]:
    """A checked copy of an events.insert body: summary, start/end with time zones, end after start, attendees."""
    if not isinstance(event, dict):
        raise BadRequestError("create_calendar_event: 'event' must be an object with summary, start and end")
    summary = event.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        raise _bad("summary", "missing or empty; give the event's title")
    start_kind, start = _moment("start", event.get("start"))
    end_kind, end = _moment("end", event.get("end"))
    if start_kind != end_kind:
        raise _bad("end", f"is a {end_kind} but start is a {start_kind}; use 'date' for both or 'dateTime' for both")
    if start is not None and end is not None and not end > start:
        hint = " (all-day events end on the day after their last day)" if start_kind == "date" else ""
        raise _bad("end", f"must be after event.start{hint}")
    out = dict(event)
    attendees = event.get("attendees")
    if attendees is not None:
        if not isinstance(attendees, list):
            raise _bad("attendees", "must be a list of {'email': ...} objects")
        checked = []
        for i, who in enumerate(attendees):
            if isinstance(who, str):
                who = {"email": who}
            email = who.get("email") if isinstance(who, dict) else None
            if not isinstance(email, str) or not _EMAIL.match(email.strip()):
                raise _bad(f"attendees[{i}].email", f"{email!r} is not an email address like a@example.com")
            checked.append({**who, "email": email.strip()})
        out["attendees"] = checked
    return out


def check_range(time_min: str | None, time_max: str | None) -> None:
    """Check list_calendar_events' bounds: RFC 3339 with an offset (Google's rule), and min before max."""
    moments = {}
    for name, value in (("time_min", time_min), ("time_max", time_max)):
        if value is None or value == "":
            continue
        problem = f"{value!r} is not an RFC 3339 date-time with offset like 2025-03-01T00:00:00Z"
        if not isinstance(value, str) or not _DATETIME.match(value):
            raise BadRequestError(f"list_calendar_events: {name}: {problem}")
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise BadRequestError(f"list_calendar_events: {name}: {problem}") from None
        if moment.tzinfo is None:
            raise BadRequestError(f"list_calendar_events: {name}: {value!r} needs a UTC offset (e.g. Z or +01:00)")
        moments[name] = moment
    if len(moments) == 2 and moments["time_max"] - moments["time_min"] <= timedelta(0):
        raise BadRequestError("list_calendar_events: time_max must be after time_min")
