"""Installed-file integrity against real wheels' RECORD, and the approved-distributions lock."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from erp_plugins_core._errors import IntegrityError
from erp_plugins_core._integrity import (
    FileProblem,
    LockEntry,
    build_lock,
    check_lock,
    editable_location,
    lock_from_json,
    lock_to_json,
    record_digest,
    verify_distribution,
)


def _load_wheelkit():
    spec = importlib.util.spec_from_file_location("_wheelkit", Path(__file__).parent / "data_integrity" / "wheelkit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wheelkit = _load_wheelkit()

NAME = "erp-sample-good"
PLUGIN_PY = '''"""Sample plugin module."""

from __future__ import annotations

import json


class SamplePlugin:
    def describe(self) -> str:
        return json.dumps({"name": "sample_good"})
'''
FILES = {
    "erp_sample_good/__init__.py": '"""Sample plugin distribution."""\n',
    "erp_sample_good/plugin.py": PLUGIN_PY,
    "erp_sample_good/plugin.yaml": "name: sample_good\nversion: '1.0'\nplugin_type: integration\napi_version: '1.0'\n",
    "erp_sample_good/sub/__init__.py": "",
    "erp_sample_good/sub/helpers.py": "def helper() -> int:\n    return 1\n",
}


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Sites with real installs: `base` (1.0), `newer` (1.1), `swapped` (1.0 rebuilt with a changed plugin.py)."""
    root = tmp_path_factory.mktemp("integrity")
    kit = wheelkit.WheelKit(root)
    v10 = kit.build(NAME, "1.0", FILES, scripts={"erp-sample-good": "erp_sample_good.plugin:main"})
    v11 = kit.build(NAME, "1.1", FILES)
    swapped = kit.build(NAME, "1.0", {**FILES, "erp_sample_good/plugin.py": PLUGIN_PY + "\nSWAPPED = True\n"},
                        tag="-swapped")
    return {
        "base": kit.install(root / "base", v10),
        "newer": kit.install(root / "newer", v11),
        "swapped": kit.install(root / "swapped", swapped),
    }


@pytest.fixture
def site(sites: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the clean 1.0 install that a test may tamper with."""
    return Path(shutil.copytree(sites["base"], tmp_path / "site", symlinks=True))


def dist_in(site: Path):
    return wheelkit.installed(site, NAME)


def test_clean_install_has_no_problems(site: Path) -> None:
    assert (site / "erp_sample_good" / "__pycache__").is_dir()  # pip compiled: cached bytecode must be ignored
    assert (site / "bin" / "erp-sample-good").is_file()  # RECORD says ../../bin/: --target moved it; not checked
    assert "../../bin/erp-sample-good," in next(site.glob("*.dist-info/RECORD")).read_text()
    assert verify_distribution(dist_in(site)) == []


def test_changed_file_same_size_is_named(site: Path) -> None:
    target = site / "erp_sample_good" / "plugin.py"
    original = target.read_text()
    target.write_text(original.replace("sample_good", "sample_evil"))  # same length, different bytes
    assert target.stat().st_size == len(original)

    problems = verify_distribution(dist_in(site))

    assert problems == [FileProblem("erp_sample_good/plugin.py", "changed",
                                    "changed after installation (sha256 differs from RECORD)")]
    assert str(problems[0]) == "erp_sample_good/plugin.py: changed after installation (sha256 differs from RECORD)"


def test_changed_size_is_named(site: Path) -> None:
    (site / "erp_sample_good" / "plugin.yaml").write_text("name: hijacked\n")

    [problem] = verify_distribution(dist_in(site))

    assert (problem.path, problem.problem) == ("erp_sample_good/plugin.yaml", "changed")
    assert "size" in problem.detail and "RECORD" in problem.detail


def test_symlink_replacing_a_file_is_named(site: Path) -> None:
    target = site / "erp_sample_good" / "sub" / "helpers.py"
    copy = site / "elsewhere.py"
    copy.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(copy)  # same bytes behind it, but not the installed file

    [problem] = verify_distribution(dist_in(site))

    assert (problem.path, problem.problem) == ("erp_sample_good/sub/helpers.py", "changed")
    assert "symbolic link" in problem.detail


def test_deleted_file_is_missing(site: Path) -> None:
    (site / "erp_sample_good" / "sub" / "helpers.py").unlink()

    assert verify_distribution(dist_in(site)) == [
        FileProblem("erp_sample_good/sub/helpers.py", "missing", "missing (listed in RECORD, not on disk)")
    ]


def test_added_files_are_unexpected_but_bytecode_cache_is_not(site: Path) -> None:
    pkg = site / "erp_sample_good"
    (pkg / "backdoor.py").write_text("import os\n")
    (pkg / "sub" / "payload.pyc").write_bytes(b"\x00" * 16)  # sourceless .pyc next to sources is importable
    (pkg / "sub" / "__pycache__").mkdir(exist_ok=True)
    (pkg / "sub" / "__pycache__" / "extra.cpython-311.pyc").write_bytes(b"\x00" * 16)
    (pkg / "__pycache__" / "notes.txt").write_text("not bytecode")
    (site / "outside_the_package.py").write_text("")  # not inside the distribution's package folders

    problems = verify_distribution(dist_in(site))

    assert [(p.path, p.problem) for p in problems] == [
        ("erp_sample_good/__pycache__/notes.txt", "unexpected"),
        ("erp_sample_good/backdoor.py", "unexpected"),
        ("erp_sample_good/sub/payload.pyc", "unexpected"),
    ]
    assert str(problems[1]) == "erp_sample_good/backdoor.py: not listed in RECORD (added after installation)"


def test_symlinked_folder_in_package_is_unexpected(site: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "__init__.py").write_text("")
    (site / "erp_sample_good" / "linked").symlink_to(tmp_path / "elsewhere")

    assert [(p.path, p.problem) for p in verify_distribution(dist_in(site))] == [
        ("erp_sample_good/linked", "unexpected")
    ]


def test_missing_record_cannot_be_verified(site: Path) -> None:
    dist = dist_in(site)
    next(site.glob("*.dist-info/RECORD")).unlink()

    [problem] = verify_distribution(dist)

    assert (problem.path, problem.problem) == ("RECORD", "missing")
    assert "cannot be verified" in problem.detail and "wheel" in problem.detail
    with pytest.raises(IntegrityError, match="erp-sample-good 1.0: no RECORD"):
        record_digest(dist)


def test_editable_install_is_reported_as_such(site: Path) -> None:
    direct_url = next(site.glob("*.dist-info/direct_url.json"))
    direct_url.write_text(json.dumps({"url": "file:///src/erp-sample-good", "dir_info": {"editable": True}}))
    dist = dist_in(site)

    assert editable_location(dist) == "/src/erp-sample-good"
    [problem] = verify_distribution(dist)
    assert (problem.path, problem.problem) == ("RECORD", "missing")
    assert problem.detail.startswith("editable install from /src/erp-sample-good")
    with pytest.raises(IntegrityError, match="editable install"):
        build_lock([dist])


def test_wheel_install_is_not_editable(site: Path) -> None:
    assert editable_location(dist_in(site)) is None


def test_malformed_record_is_a_problem(site: Path) -> None:
    record = next(site.glob("*.dist-info/RECORD"))
    record.write_text(record.read_text() + "one,field,too,many\n")

    [problem] = verify_distribution(dist_in(site))

    assert problem.path.endswith(".dist-info/RECORD") and problem.problem == "changed"
    assert "malformed" in problem.detail and "4 fields" in problem.detail


# --- the lock ---------------------------------------------------------------------------------------------------


def test_record_digest_is_sha256_of_record_bytes(site: Path) -> None:
    record = next(site.glob("*.dist-info/RECORD"))
    assert record_digest(dist_in(site)) == hashlib.sha256(record.read_bytes()).hexdigest()


def test_lock_round_trip_and_clean_check(site: Path) -> None:
    dist = dist_in(site)
    lock = build_lock([dist])

    assert lock == {"erp-sample-good": LockEntry("erp-sample-good", "1.0", record_digest(dist))}
    text = lock_to_json(lock)
    assert lock_from_json(text) == lock
    assert json.loads(text)["distributions"][0]["distribution"] == "erp-sample-good"
    assert check_lock(dist, lock_from_json(text)) == []


def test_distribution_not_in_lock_is_not_approved(site: Path) -> None:
    assert check_lock(dist_in(site), {}) == [
        "erp-sample-good 1.0 is not approved: it is not in the lock; run `erp-plugins lock` to approve it"
    ]


def test_version_drift_is_named(sites: dict[str, Path]) -> None:
    lock = build_lock([dist_in(sites["base"])])

    problems = check_lock(dist_in(sites["newer"]), lock)

    assert len(problems) == 2
    assert problems[0].startswith("erp-sample-good: version 1.1 is installed but 1.0 was approved")
    assert "RECORD differs from the approved one" in problems[1]


def test_same_version_with_other_content_is_caught_by_the_lock(sites: dict[str, Path]) -> None:
    lock = build_lock([dist_in(sites["base"])])
    swapped = dist_in(sites["swapped"])

    assert verify_distribution(swapped) == []  # consistent with its own RECORD: only the lock can tell
    [problem] = check_lock(swapped, lock)
    assert problem.startswith("erp-sample-good 1.0: RECORD differs from the approved one")


def test_tampering_that_rewrites_record_is_caught_by_the_lock(site: Path) -> None:
    dist = dist_in(site)
    lock = build_lock([dist])
    target = site / "erp_sample_good" / "plugin.py"
    target.write_text(PLUGIN_PY + "import os\n")
    digest = base64.urlsafe_b64encode(hashlib.sha256(target.read_bytes()).digest()).rstrip(b"=").decode()
    record = next(site.glob("*.dist-info/RECORD"))
    lines = [
        f"erp_sample_good/plugin.py,sha256={digest},{target.stat().st_size}"
        if line.startswith("erp_sample_good/plugin.py,") else line
        for line in record.read_text().splitlines()
    ]
    record.write_text("\n".join(lines) + "\n")

    assert verify_distribution(dist) == []
    assert any("RECORD differs" in p for p in check_lock(dist, lock))


def test_lock_keys_are_canonical_names(site: Path) -> None:
    entry = {"distribution": "ERP_Sample.Good", "version": "1.0", "record_sha256": "0" * 64}
    lock = lock_from_json(json.dumps({"format": "erp-plugins-lock/1", "distributions": [entry]}))
    assert list(lock) == ["erp-sample-good"]
    assert "RECORD differs" in check_lock(dist_in(site), lock)[0]


GOOD_ENTRY = {"distribution": "x", "version": "1", "record_sha256": "a" * 64}


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("{not json", "not JSON"),
        ("[]", "expected a JSON object"),
        (json.dumps({"format": "other", "distributions": []}), "field 'format'"),
        (json.dumps({"format": "erp-plugins-lock/1", "distributions": {}}), "must be a list"),
        (json.dumps({"format": "erp-plugins-lock/1", "distributions": [], "x": 1}), "unknown field"),
        (json.dumps({"format": "erp-plugins-lock/1", "distributions": [{"distribution": "x"}]}), "exactly"),
        (json.dumps({"format": "erp-plugins-lock/1", "distributions": [{**GOOD_ENTRY, "version": 1}]}),
         r"distributions\[0\].version must be a non-empty string"),
        (json.dumps({"format": "erp-plugins-lock/1", "distributions": [{**GOOD_ENTRY, "record_sha256": "XYZ"}]}),
         "64 lower-case hex"),
        (json.dumps({"format": "erp-plugins-lock/1", "distributions": [GOOD_ENTRY, GOOD_ENTRY]}), "repeats"),
    ],
)
def test_malformed_lock_is_a_clear_error(text: str, fault: str) -> None:
    with pytest.raises(IntegrityError, match=fault) as caught:
        lock_from_json(text)
    message = str(caught.value)
    assert message.startswith("the approved-distributions lock is malformed: ")
    assert message.endswith("run `erp-plugins lock` to rebuild it")
    assert "\n" not in message
