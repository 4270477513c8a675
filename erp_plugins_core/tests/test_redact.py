"""Redaction of secret values and of credentials in URLs."""

from __future__ import annotations

from erp_plugins_core import redact_url
from erp_plugins_core._redact import Redactor


def test_redactor_replaces_secrets_in_nested_values_longest_first() -> None:
    r = Redactor(["sk-abc", "sk-abcdef", "ab"])  # "ab" is too short to redact ordinary text
    assert r.redact({"k": ["key sk-abcdef here", ("sk-abc",)], "n": 1}) == {"k": ["key *** here", ("***",)], "n": 1}
    assert r.text("about") == "about"


def test_redact_url_drops_credentials_only() -> None:
    assert redact_url("http://user:pw@example.com:8080/v1?x=1") == "http://example.com:8080/v1?x=1"
    assert redact_url("http://example.com/v1") == "http://example.com/v1"
