"""The manifest, the package's import weight, config validation, and the HTML-to-text rendering."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from importlib.resources import files

import pytest

from erp_plugin_google._config import parse_config
from erp_plugin_google._credentials import load_credentials
from erp_plugin_google._mime import html_to_text
from erp_plugin_google.plugin import GoogleServicesPlugin
from erp_plugins_core._errors import ConfigError
from erp_plugins_core._hookspecs import HOOKS
from erp_plugins_core._manifest import load_manifest

CREDS = json.dumps({"type": "authorized_user", "client_id": "cid", "client_secret": "very-secret-value",
                    "refresh_token": "1//refresh-secret"})


def test_manifest_is_valid_and_matches_the_class():
    text = files("erp_plugin_google").joinpath("plugin.yaml").read_bytes()
    manifest = load_manifest(text, "erp_plugin_google/plugin.yaml")
    assert manifest.name == "google_services"
    assert manifest.version == version("erp-plugin-google")
    assert manifest.plugin_type.value == "integration" and manifest.api_version == "1.0"
    assert set(manifest.permissions) == {"email.send", "files.upload", "files.read", "calendar.read", "calendar.write"}
    hooks = {h.name: h.method for h in manifest.hooks}
    assert hooks == {h: h for h in ("send_email", "upload_file", "create_calendar_event", "list_calendar_events")}
    for hook, method in hooks.items():
        assert callable(getattr(GoogleServicesPlugin, method))
        assert HOOKS[hook].permission in manifest.permissions
    assert manifest.resources.network_access is True and manifest.resources.timeout == 600
    assert manifest.resources.memory_limit == "1GB"
    assert manifest.security.sandbox is True and manifest.security.network_isolation is False
    assert manifest.sensitive_keys == {"credentials_file", "service_account_file"}
    assert set(manifest.config_schema["properties"]) == {
        "credentials_file", "service_account_file", "subject", "scopes", "root_url", "upload_chunk_size"
    }


def test_entry_point_names_the_class():
    from importlib.metadata import entry_points

    [ep] = [e for e in entry_points(group="erp_plugins") if e.name == "google_services"]
    assert ep.value == "erp_plugin_google.plugin:GoogleServicesPlugin"


def test_package_import_does_not_load_the_client():
    code = "import sys, erp_plugin_google; assert 'googleapiclient' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({}, "set exactly one of 'credentials_file'"),
        ({"credentials_file": CREDS, "service_account_file": CREDS}, "both are set"),
        ({"service_account_file": "{}"}, "needs 'subject'"),
        ({"credentials_file": CREDS, "subject": "a@example.com"}, "'subject' only applies"),
        ({"credentials_file": CREDS, "root_url": "ftp://x"}, "'root_url' must be an http(s) URL"),
        ({"credentials_file": CREDS, "upload_chunk_size": 1000}, "'upload_chunk_size' must be an integer"),
        ({"credentials_file": CREDS, "upload_chunk_size": 300 * 1024}, "multiple of 262144"),
        ({"credentials_file": CREDS, "scopes": [1]}, "'scopes' must be a list"),
        ({"credentials_file": 5}, "'credentials_file' must be a string"),
    ],
)
def test_config_errors(config, needle):
    with pytest.raises(ConfigError, match="google_services") as info:
        parse_config(config)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("/nonexistent/creds.json", "cannot read credentials_file"),
        ("{not json", "credentials_file is not valid JSON"),
        (json.dumps({"type": "service_account"}), "use service_account_file"),
        (json.dumps({"client_id": "x"}), "lacks refresh_token, client_secret"),
        (json.dumps({"client_id": "x", "client_secret": "y", "refresh_token": "z", "expiry": "soon"}),
         "'expiry' 'soon'"),
    ],
)
def test_credential_errors(value, needle):
    with pytest.raises(ConfigError) as info:
        load_credentials(parse_config({"credentials_file": value}))
    assert needle in str(info.value)


def test_credentials_from_a_path_and_defaults(tmp_path):
    path = tmp_path / "creds.json"
    path.write_text(CREDS)
    config = parse_config({"credentials_file": str(path), "scopes": "gmail.send, calendar"})
    assert config.scopes == ("https://www.googleapis.com/auth/gmail.send", "https://www.googleapis.com/auth/calendar")
    assert config.upload_chunk_size == 8 * 1024 * 1024
    creds, granted = load_credentials(config)
    assert creds.token_uri == "https://oauth2.googleapis.com/token"
    assert granted is None
    assert "very-secret" not in repr(config) and "refresh-secret" not in repr(config)


def test_root_url_moves_the_token_endpoint_too():
    creds, _ = load_credentials(parse_config({"credentials_file": CREDS, "root_url": "http://127.0.0.1:9"}))
    assert creds.token_uri == "http://127.0.0.1:9/token"


def test_default_scopes_cover_every_hook():
    from erp_plugin_google import _scopes

    config = parse_config({"credentials_file": CREDS})
    assert all(_scopes.missing_for(h, config.scopes) is None for h in _scopes.HOOK_SCOPES)


def test_html_to_text():
    text = html_to_text("<div>Hello&amp;welcome<script>alert(1)</script></div><p>a<br/>b</p>"
                        "<table><tr><td>x</td><td>y</td></tr></table>")
    assert text == "Hello&welcome\n\na\nb\n\n\tx\ty\n"
