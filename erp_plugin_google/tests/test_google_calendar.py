"""Calendar hooks over the real client against the loopback Calendar: validation, insert, paging, ranges."""

from __future__ import annotations

import pytest

from erp_plugins_core._errors import BadRequestError, ModelNotFoundError

MEETING = {
    "summary": "Quarterly review",
    "location": "Room 4",
    "start": {"dateTime": "2025-03-10T10:00:00", "timeZone": "Europe/Berlin"},
    "end": {"dateTime": "2025-03-10T11:30:00", "timeZone": "Europe/Berlin"},
    "attendees": [{"email": "cfo@example.com"}, "ops@example.com"],
}


async def test_create_event_with_attendees(make_plugin, fake):
    plugin, _ = await make_plugin()
    event_id = await plugin.create_calendar_event(calendar_id="primary", event=MEETING)
    [stored] = fake.calendars["primary"]
    assert stored["id"] == event_id
    assert stored["summary"] == "Quarterly review" and stored["location"] == "Room 4"
    assert [a["email"] for a in stored["attendees"]] == ["cfo@example.com", "ops@example.com"]
    [seen] = fake.requests_to("calendar.insert")
    assert seen.query["sendUpdates"] == "all"
    assert seen.token is not None


async def test_all_day_event_without_attendees(make_plugin, fake):
    plugin, _ = await make_plugin()
    await plugin.create_calendar_event(
        calendar_id="primary",
        event={"summary": "Inventory", "start": {"date": "2025-04-01"}, "end": {"date": "2025-04-02"}},
    )
    assert "sendUpdates" not in fake.requests_to("calendar.insert")[0].query


def _with(**changes):
    event = {k: v for k, v in MEETING.items() if k != "attendees"}
    for key, value in changes.items():
        if value is None:
            event.pop(key, None)
        else:
            event[key] = value
    return event


@pytest.mark.parametrize(
    ("event", "needle"),
    [
        ("not a dict", "'event' must be an object"),
        (_with(summary=None), "event.summary: missing or empty"),
        (_with(summary="  "), "event.summary: missing or empty"),
        (_with(end=None), "event.end: missing or not an object"),
        (_with(start={"dateTime": "2025-03-10T10:00:00"}), "event.start: dateTime '2025-03-10T10:00:00' has no UTC"),
        (_with(start={"dateTime": "2025-03-10T10:00:00", "timeZone": "Mars/Olympus"}),
         "event.start.timeZone: unknown time zone 'Mars/Olympus'"),
        (_with(start={"dateTime": "10.03.2025 10:00"}), "event.start.dateTime: '10.03.2025 10:00' is not an RFC 3339"),
        (_with(start={"date": "2025-02-30"}, end={"date": "2025-03-01"}),
         "event.start.date: '2025-02-30' is not a real"),
        (_with(start={"date": "2025-03-10", "dateTime": "2025-03-10T10:00:00Z"}), "event.start: give exactly one"),
        (_with(end={"date": "2025-03-11"}), "event.end: is a date but start is a dateTime"),
        (_with(end={"dateTime": "2025-03-10T09:00:00+01:00"}), "event.end: must be after event.start"),
        (_with(start={"date": "2025-03-10"}, end={"date": "2025-03-10"}),
         "event.end: must be after event.start (all-day events end on the day after their last day)"),
        (_with(attendees=[{"email": "cfo@example.com"}, {"email": "bob"}]),
         "event.attendees[1].email: 'bob' is not an email address"),
        (_with(attendees=[{"name": "x"}]), "event.attendees[0].email: None"),
        (_with(attendees="cfo@example.com"), "event.attendees: must be a list"),
    ],
)
async def test_invalid_events_are_refused_naming_the_field(make_plugin, fake, event, needle):
    plugin, _ = await make_plugin()
    with pytest.raises(BadRequestError) as info:
        await plugin.create_calendar_event(calendar_id="primary", event=event)
    assert needle in str(info.value)
    assert str(info.value).startswith("create_calendar_event:")
    assert fake.requests_to("calendar.insert") == []


async def test_offsets_are_compared_across_time_zones(make_plugin, fake):
    plugin, _ = await make_plugin()
    # 10:00 in Berlin (09:00Z) to 09:30Z: a valid 30-minute event although "09:30" < "10:00" as text
    await plugin.create_calendar_event(calendar_id="primary", event=_with(
        start={"dateTime": "2025-03-10T10:00:00", "timeZone": "Europe/Berlin"},
        end={"dateTime": "2025-03-10T09:30:00Z"},
    ))
    assert len(fake.calendars["primary"]) == 1


async def test_list_follows_every_page_within_the_range(make_plugin, fake):
    fake.page_size = 3
    fake.calendars["team@example.com"] = []
    plugin, _ = await make_plugin()
    for day in range(1, 11):
        await plugin.create_calendar_event(calendar_id="team@example.com", event={
            "summary": f"Standup {day}",
            "start": {"dateTime": f"2025-05-{day:02d}T09:00:00Z"},
            "end": {"dateTime": f"2025-05-{day:02d}T09:15:00Z"},
        })

    everything = await plugin.list_calendar_events(calendar_id="team@example.com", time_min=None, time_max=None)
    assert [e["summary"] for e in everything] == [f"Standup {d}" for d in range(1, 11)]
    assert len(fake.requests_to("calendar.list")) == 4  # 3 + 3 + 3 + 1

    window = await plugin.list_calendar_events(
        calendar_id="team@example.com", time_min="2025-05-03T00:00:00Z", time_max="2025-05-08T00:00:00+00:00"
    )
    assert [e["summary"] for e in window] == [f"Standup {d}" for d in range(3, 8)]
    pages = fake.requests_to("calendar.list")[4:]
    assert len(pages) == 2
    assert all(p.query["timeMin"] == "2025-05-03T00:00:00Z" for p in pages)
    assert pages[0].query["singleEvents"] == "true" and pages[0].query["orderBy"] == "startTime"
    assert "pageToken" not in pages[0].query and "pageToken" in pages[1].query


@pytest.mark.parametrize(
    ("time_min", "time_max", "needle"),
    [
        ("yesterday", None, "time_min: 'yesterday' is not an RFC 3339"),
        ("2025-05-01T00:00:00", None, "time_min: '2025-05-01T00:00:00' needs a UTC offset"),
        (None, "2025-05-01", "time_max: '2025-05-01' is not an RFC 3339"),
        ("2025-05-02T00:00:00Z", "2025-05-01T00:00:00Z", "time_max must be after time_min"),
    ],
)
async def test_bad_ranges_are_refused(make_plugin, fake, time_min, time_max, needle):
    plugin, _ = await make_plugin()
    with pytest.raises(BadRequestError, match="list_calendar_events") as info:
        await plugin.list_calendar_events(calendar_id="primary", time_min=time_min, time_max=time_max)
    assert needle in str(info.value)
    assert fake.requests_to("calendar.list") == []


async def test_missing_calendar_is_named(make_plugin, fake):
    plugin, _ = await make_plugin()
    with pytest.raises(ModelNotFoundError, match="calendar 'nobody@example.com' does not exist"):
        await plugin.list_calendar_events(calendar_id="nobody@example.com", time_min=None, time_max=None)
    with pytest.raises(ModelNotFoundError, match="calendar 'nobody@example.com'"):
        await plugin.create_calendar_event(calendar_id="nobody@example.com", event=MEETING)
