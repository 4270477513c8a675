"""Credentials, token refresh, and Google's errors as the host's error classes, over the real client."""

from __future__ import annotations

import json
import time

import pytest
from google_testkit import ALL_PERMISSIONS

from erp_plugins_core._errors import (
    AuthenticationError,
    ModelNotFoundError,
    RateLimitError,
    UnavailableError,
)
from tests.servers.google_fake import AUTH

EVENT = {
    "summary": "Sync",
    "start": {"dateTime": "2025-03-10T10:00:00Z"},
    "end": {"dateTime": "2025-03-10T10:30:00Z"},
}


def _no_secrets(text: str, creds: dict) -> None:
    for key in ("client_secret", "refresh_token", "token"):
        if creds.get(key):
            assert creds[key] not in text, f"{key} leaked into {text!r}"


async def test_expired_token_is_refreshed_at_the_token_endpoint(make_plugin, fake):
    creds = fake.user_credentials(expires_in=-600)
    plugin, _ = await make_plugin(credentials=creds)
    await plugin.create_calendar_event(calendar_id="primary", event=EVENT)
    assert [r["grant_type"] for r in fake.token_requests] == ["refresh_token"]
    [seen] = fake.requests_to("calendar.insert")
    assert seen.token != creds["token"] and seen.token in fake.access_tokens


async def test_credentials_without_expiry_are_refreshed_first(make_plugin, fake):
    creds = fake.user_credentials()
    del creds["expiry"]
    plugin, _ = await make_plugin(credentials=creds)
    await plugin.list_calendar_events(calendar_id="primary", time_min=None, time_max=None)
    assert len(fake.token_requests) == 1


async def test_access_token_rejected_then_refreshed(make_plugin, fake):
    plugin, _ = await make_plugin()
    fake.expire_access_tokens()  # the server no longer accepts the token although it looks valid
    await plugin.create_calendar_event(calendar_id="primary", event=EVENT)
    assert len(fake.token_requests) == 1
    assert len(fake.requests_to("calendar.insert")) == 2  # 401, refresh, retry


async def test_revoked_credentials_ask_to_reauthorise(make_plugin, fake):
    creds = fake.user_credentials()
    plugin, _ = await make_plugin(credentials=creds)
    fake.revoke_all()
    with pytest.raises(AuthenticationError, match="re-authorise") as info:
        await plugin.create_calendar_event(calendar_id="primary", event=EVENT)
    assert "expired or revoked" in str(info.value)
    _no_secrets(str(info.value), creds)


async def test_expired_and_revoked(make_plugin, fake):
    creds = fake.user_credentials(expires_in=-600)
    fake.revoke_all()
    plugin, _ = await make_plugin(credentials=creds)
    with pytest.raises(AuthenticationError, match="re-authorise"):
        await plugin.send_email(to="a@example.com", subject="s", body="b", attachments=[])
    assert fake.mails == []


async def test_401_that_persists(make_plugin, fake):
    creds = fake.user_credentials()
    plugin, _ = await make_plugin(credentials=creds)
    fake.fail("calendar.insert", 401, times=10)
    with pytest.raises(AuthenticationError, match="Google refused the credentials for create_calendar_event") as info:
        await plugin.create_calendar_event(calendar_id="primary", event=EVENT)
    assert "re-authorise" in str(info.value)
    _no_secrets(str(info.value), creds)


async def test_missing_scope_is_named(make_plugin, fake):
    # the refresh token was granted only Calendar: Gmail answers 403 insufficientPermissions
    creds = fake.user_credentials(token_scopes=[AUTH + "calendar"])
    plugin, _ = await make_plugin(credentials=creds)
    with pytest.raises(AuthenticationError) as info:
        await plugin.send_email(to="a@example.com", subject="s", body="b", attachments=[])
    assert "lack the scope https://www.googleapis.com/auth/gmail.send" in str(info.value)
    assert "add it to 'scopes' and re-authorise" in str(info.value)
    await plugin.create_calendar_event(calendar_id="primary", event=EVENT)  # calendar still works


async def test_injected_403_on_drive_names_the_drive_scope(make_plugin, fake, tmp_path):
    from google_testkit import allow_files

    plugin, _ = await make_plugin()
    path = tmp_path / "a.txt"
    path.write_bytes(b"a")
    allow_files(path)
    fake.fail("drive.create", 403)
    with pytest.raises(AuthenticationError, match="lack the scope https://www.googleapis.com/auth/drive.file"):
        await plugin.upload_file(file_path=str(path), folder_id=None)


async def test_404_injected(make_plugin, fake):
    plugin, _ = await make_plugin()
    fake.fail("calendar.list", 404)
    with pytest.raises(ModelNotFoundError, match="calendar 'primary'"):
        await plugin.list_calendar_events(calendar_id="primary", time_min=None, time_max=None)


@pytest.mark.parametrize("status", [429, 500])
async def test_transient_errors_are_retried_by_the_client(make_plugin, fake, status):
    plugin, _ = await make_plugin()
    fake.fail("calendar.insert", status, times=1)
    event_id = await plugin.create_calendar_event(calendar_id="primary", event=EVENT)
    assert [e["id"] for e in fake.calendars["primary"]] == [event_id]
    assert len(fake.requests_to("calendar.insert")) == 2


async def test_rate_limit_after_retries(make_plugin, fake):
    plugin, _ = await make_plugin()
    plugin.num_retries = 0
    fake.fail("gmail.send", 429, times=5, retry_after="7")
    with pytest.raises(RateLimitError, match="rate-limited send_email") as info:
        await plugin.send_email(to="a@example.com", subject="s", body="b", attachments=[])
    assert info.value.retry_after == 7.0


async def test_server_errors_after_retries(make_plugin, fake):
    plugin, _ = await make_plugin()
    plugin.num_retries = 0
    fake.fail("calendar.list", 500, times=5)
    with pytest.raises(UnavailableError, match="HTTP 500"):
        await plugin.list_calendar_events(calendar_id="primary", time_min=None, time_max=None)


async def test_unreachable_server(make_plugin, fake):
    plugin, _ = await make_plugin()
    plugin.num_retries = 0
    fake.stop()
    with pytest.raises(UnavailableError, match="cannot reach Google"):
        await plugin.create_calendar_event(calendar_id="primary", event=EVENT)
    fake.start()  # so the fixture can stop it again


async def test_service_account_acting_for_a_user(make_plugin, fake):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    email = "erp-bot@project.iam.gserviceaccount.com"
    fake.add_service_account(email, key.public_key())
    info = {
        "type": "service_account", "project_id": "project", "private_key_id": "k1", "private_key": pem,
        "client_email": email, "client_id": "123", "token_uri": "https://oauth2.googleapis.com/token",
    }
    plugin, _ = await make_plugin(service_account_file=json.dumps(info), subject="billing@example.com")
    await plugin.create_calendar_event(calendar_id="primary", event=EVENT)
    [grant] = fake.token_requests
    assert grant["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert grant["sub"] == "billing@example.com"
    health = await plugin.health_check()
    assert health["healthy"] is True, health


async def test_health_ok_and_expired_refreshed(make_plugin, fake):
    plugin, _ = await make_plugin(credentials=fake.user_credentials(expires_in=-60))
    health = await plugin.health_check()
    assert health["healthy"] is True, health
    assert set(health["hooks"]) == {"send_email", "upload_file", "create_calendar_event", "list_calendar_events"}
    assert len(fake.token_requests) == 1
    assert health["token_expiry"] > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())


async def test_health_revoked(make_plugin, fake):
    plugin, _ = await make_plugin(credentials=fake.user_credentials(expires_in=-60))
    fake.revoke_all()
    health = await plugin.health_check()
    assert health["healthy"] is False
    assert "re-authorise" in health["detail"]


async def test_health_names_a_scope_missing_for_a_granted_hook(make_plugin, fake):
    calendar_only = [AUTH + "calendar"]
    creds = fake.user_credentials(scopes=calendar_only)
    plugin, _ = await make_plugin(credentials=creds, scopes=calendar_only)
    health = await plugin.health_check()
    assert health["healthy"] is False
    assert "send_email needs scope https://www.googleapis.com/auth/gmail.send" in health["detail"]
    assert "upload_file needs scope https://www.googleapis.com/auth/drive.file" in health["detail"]


async def test_health_judges_only_granted_hooks(make_plugin, fake):
    calendar_only = ["calendar"]  # short names are expanded
    creds = fake.user_credentials(scopes=[AUTH + "calendar"])
    plugin, _ = await make_plugin(
        credentials=creds, scopes=calendar_only, granted=frozenset({"calendar.read", "calendar.write"})
    )
    health = await plugin.health_check()
    assert health["healthy"] is True, health
    assert health["hooks"] == ["create_calendar_event", "list_calendar_events"]
    assert ALL_PERMISSIONS > frozenset({"calendar.read"})


async def test_health_notices_a_token_revoked_before_it_expires(make_plugin, fake):
    plugin, _ = await make_plugin()  # a token valid for an hour: nothing local says anything is wrong
    assert (await plugin.health_check())["healthy"] is True
    fake.revoke_all()  # the user removed the app's access
    health = await plugin.health_check()
    assert health["healthy"] is False
    assert "re-authorise" in health["detail"] and health["error"] == "AuthenticationError"
    assert fake.requests_to("tokeninfo")[-1].headers.get("authorization") is None


async def test_health_refreshes_an_access_token_google_stopped_accepting(make_plugin, fake):
    plugin, _ = await make_plugin()
    fake.expire_access_tokens()  # the refresh token still works
    health = await plugin.health_check()
    assert health["healthy"] is True, health
    assert len(fake.token_requests) == 1
    assert len(fake.requests_to("tokeninfo")) == 2  # rejected, then accepted after the refresh
    await plugin.list_calendar_events(calendar_id="primary")  # the refreshed token serves calls too


async def test_health_judges_the_scopes_google_says_the_token_carries(make_plugin, fake):
    everything = [AUTH + "gmail.send", AUTH + "drive.file", AUTH + "calendar"]
    # the credentials file claims every scope, but the token Google issued carries only calendar
    creds = fake.user_credentials(scopes=everything, token_scopes=[AUTH + "calendar"])
    plugin, _ = await make_plugin(credentials=creds)
    health = await plugin.health_check()
    assert health["healthy"] is False
    assert "send_email needs scope https://www.googleapis.com/auth/gmail.send" in health["detail"]
    assert "upload_file needs scope https://www.googleapis.com/auth/drive.file" in health["detail"]
    assert "create_calendar_event" not in health["detail"]


async def test_health_when_google_cannot_check_the_token(make_plugin, fake):
    plugin, _ = await make_plugin()
    fake.fail("tokeninfo", 503, times=1)
    health = await plugin.health_check()
    assert health["healthy"] is False
    assert health["error"] == "UnavailableError" and "503" in health["detail"]
    assert "access_token" not in health["detail"] and "ya29" not in health["detail"]
    assert (await plugin.health_check())["healthy"] is True


async def test_health_with_a_root_url_that_lacks_tokeninfo_says_so(make_plugin, fake):
    plugin, _ = await make_plugin()
    fake.fail("tokeninfo", 404, times=1)
    health = await plugin.health_check()
    assert health["healthy"] is False and health["error"] == "UnavailableError"
    assert "oauth2/v3/tokeninfo" in health["detail"] and "root_url" in health["detail"]
