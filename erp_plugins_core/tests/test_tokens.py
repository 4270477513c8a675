"""API tokens (`_tokens`) on a real state store, and the `token` / `serve` commands run as subprocesses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from erp_plugins_core._errors import ConfigError
from erp_plugins_core._state import open_store
from erp_plugins_core._tokens import (
    TokenError,
    create_token,
    parse_token,
    scope_allows,
    token_json,
    validate_token_id,
    verify_token,
)


@pytest.fixture
def store(state_location: str):
    with open_store(state_location) as s:
        yield s


def test_a_token_is_256_random_bits_and_only_its_digest_is_stored(store, tmp_path: Path) -> None:
    issued = create_token(store, tenant="acme", scope="admin", label="ci")
    m = re.fullmatch(r"erp_(tok_[0-9a-f]{16})_([0-9a-f]{64})", issued.token)
    assert m is not None and m.group(1) == issued.record.id
    assert issued.token not in repr(issued) and m.group(2) not in repr(issued.record)
    rec = store.get_token(issued.record.id)
    assert rec.digest != m.group(2) and len(rec.digest) == 64 and rec.tenant == "acme" and rec.scope == "admin"
    assert verify_token(store, issued.token).id == issued.record.id
    others = {create_token(store, tenant="acme").token.rsplit("_", 1)[1] for _ in range(20)}
    assert len(others) == 20  # no repeats


def test_the_secret_is_not_in_an_sqlite_state_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with open_store(str(path)) as s:
        issued = create_token(s, tenant="acme")
    secret = issued.token.rsplit("_", 1)[1]
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert secret.encode() not in data and issued.token.encode() not in data


def test_wrong_secret_revoked_expired_and_malformed(store) -> None:
    issued = create_token(store, tenant="acme", expires_days=1)
    token_id, secret = parse_token(issued.token)
    wrong = f"erp_{token_id}_{'0' * 64 if secret != '0' * 64 else '1' * 64}"
    with pytest.raises(TokenError, match="^invalid token$"):
        verify_token(store, wrong)
    with pytest.raises(TokenError, match="malformed"):
        verify_token(store, "Bearer " + issued.token)
    assert parse_token(issued.token + "0") is None and parse_token("") is None
    with pytest.raises(TokenError, match="expired"):
        verify_token(store, issued.token, now=time.time() + 2 * 86400)
    assert store.revoke_token(issued.record.id) is True
    with pytest.raises(TokenError, match="revoked") as info:
        verify_token(store, issued.token)
    assert secret not in str(info.value)
    assert store.revoke_token("tok_0000000000000000") is False


def test_scopes_and_tenants(store) -> None:
    call = create_token(store, tenant="acme").record
    admin = create_token(store, tenant="acme", scope="admin").record
    platform = create_token(store, tenant=None, scope="admin").record
    assert scope_allows(call, tenant="acme", scope="call") is None
    assert "needs scope 'admin'" in scope_allows(call, tenant="acme", scope="admin")
    assert scope_allows(admin, tenant="acme", scope="admin") is None
    assert "another tenant" in scope_allows(admin, tenant="globex", scope="call")
    assert scope_allows(platform, tenant="globex", scope="admin") is None
    assert scope_allows(call, tenant=None, scope="call") is None


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"tenant": "acme", "scope": "root"}, "unknown token scope"),
    ({"tenant": "bad name"}, "invalid tenant name"),
    ({"tenant": "acme", "expires_days": 0}, "--expires-days"),
    ({"tenant": "acme", "expires_days": 99999}, "--expires-days"),
])
def test_bad_token_requests(store, kwargs: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        create_token(store, **kwargs)


def test_token_json_never_holds_the_secret_or_digest(store) -> None:
    issued = create_token(store, tenant="acme")
    row = token_json(store.get_token(issued.record.id))
    assert set(row) >= {"id", "tenant", "scope", "created", "expires", "last_used"}
    assert issued.record.digest not in json.dumps(row) and issued.token not in json.dumps(row)
    with pytest.raises(ConfigError, match="not a token id") as info:
        validate_token_id(issued.token)
    assert issued.token not in str(info.value)


# --- the commands ----------------------------------------------------------------------------------------------


def run(tmp_path: Path, *args: str, code: int = 0, pre: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ERP_PLUGINS_STATE": str(tmp_path / "state.db"),
           "ERP_PLUGINS_CACHE_DIR": str(tmp_path / "cache")}
    code_text = (f"{pre}\nimport sys\nfrom erp_plugins_core._cli import main\n"
                 f"sys.argv = ['erp-plugins', *{list(args)!r}]\nmain()")
    proc = subprocess.run([sys.executable, "-c", code_text], env=env, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def test_token_create_list_revoke(tmp_path: Path) -> None:
    made = run(tmp_path, "token", "create", "--tenant", "acme", "--scope", "admin", "--expires-days", "30")
    token = made.stdout.strip()
    assert re.fullmatch(r"erp_tok_[0-9a-f]{16}_[0-9a-f]{64}", token) and "shown only now" in made.stderr
    platform = json.loads(run(tmp_path, "token", "create", "--platform", "--json").stdout)
    assert platform["tenant"] is None and platform["scope"] == "call"
    rows = json.loads(run(tmp_path, "token", "list", "--json").stdout)
    assert [r["tenant"] for r in rows] == ["acme", None]
    assert rows[0]["expires"] - rows[0]["created"] == pytest.approx(30 * 86400)
    listing = run(tmp_path, "token", "list").stdout + json.dumps(rows)
    assert token not in listing and token.rsplit("_", 1)[1] not in listing and platform["token"] not in listing
    assert [r["id"] for r in json.loads(run(tmp_path, "token", "list", "--tenant", "acme", "--json").stdout)] == \
        [rows[0]["id"]]
    assert "revoked" in run(tmp_path, "token", "revoke", rows[0]["id"]).stdout
    assert json.loads(run(tmp_path, "token", "list", "--json").stdout)[0]["revoked"] is True
    assert "no token with id" in run(tmp_path, "token", "revoke", "tok_0000000000000000", code=2).stderr
    assert "not a token id" in run(tmp_path, "token", "revoke", token, code=2).stderr
    assert token not in run(tmp_path, "token", "revoke", token, code=2).stderr


@pytest.mark.parametrize(("args", "words"), [
    (("token", "create"), "exactly one of --tenant T or --platform"),
    (("token", "create", "--tenant", "a", "--platform"), "exactly one of"),
    (("token", "create", "--tenant", "a", "--scope", "root"), "'root' is not one of"),
    (("token", "create", "--tenant", "bad name"), "invalid tenant name"),
    (("serve", "--bind", "http://0.0.0.0:80"), "not a URL"),
    (("serve", "--bind", "localhost"), "is not HOST:PORT"),
    (("serve", "--bind", "127.0.0.1:99999"), "port must be from 1 to 65535"),
])
def test_bad_usage_is_one_line(tmp_path: Path, args: tuple[str, ...], words: str) -> None:
    err = run(tmp_path, *args, code=2).stderr
    assert words in err


def test_serve_without_the_extra_says_how_to_install_it(tmp_path: Path) -> None:
    proc = run(tmp_path, "serve", code=1, pre="import sys; sys.modules['uvicorn'] = None")
    assert "pip install 'erp-plugins-core[server]'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_importing_the_core_and_cli_stays_light() -> None:
    code = ("import sys, erp_plugins_core, erp_plugins_core._cli, erp_plugins_core._tokens; "
            "print(sorted(m for m in ('starlette', 'uvicorn', 'jinja2', 'psycopg') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
