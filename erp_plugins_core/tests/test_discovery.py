"""Discovery from installed distributions' files (no import), its cache, and catalog validation."""

from __future__ import annotations

import os
import shutil
import sys
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from erp_plugins_core._catalog import Catalog
from erp_plugins_core._discovery import _name_version, _plain_name_version, discover, scan

CODE = """
from erp_plugins_core import PluginInterface
raise RuntimeError("plugin code must not be imported by discovery")
class Plugin(PluginInterface):
    pass
"""


def names(found) -> set[str]:
    return {r.name for r in found.records}


def ours(catalog: Catalog, name: str):
    rec = catalog.get(name)
    assert rec is not None, f"{name} not discovered"
    return rec


def test_discovers_manifest_without_importing_plugin_code(site, manifest_text) -> None:
    site.install("erp-sample", plugins={"sample_one": (manifest_text("sample_one"), CODE)})
    found = scan()
    rec = next(r for r in found.records if r.name == "sample_one")
    assert rec.errors == ()
    assert rec.manifest is not None and rec.manifest.name == "sample_one"
    assert rec.distribution == "erp-sample" and rec.dist_version == "1.0.0"
    assert rec.entry_point == "erp_sample.sample_one.plugin:Plugin"
    assert rec.manifest_path.endswith("erp_sample/sample_one/plugin.yaml")
    assert not any(m.startswith("erp_sample") for m in sys.modules)


def test_name_and_version_mismatches_are_errors(site, manifest_text) -> None:
    site.install("erp-mis", version="2.0.0", plugins={"mis_match": (manifest_text("other_name", "1.0.0"), CODE)})
    rec = ours(Catalog.load(use_cache=False), "mis_match")
    text = " ".join(rec.errors)
    assert "name: 'other_name' differs from the entry point name 'mis_match'" in text
    assert "version: '1.0.0' differs from distribution erp-mis 2.0.0" in text


def test_broken_manifest_does_not_stop_the_others(site, manifest_text) -> None:
    site.install("erp-bad", plugins={"bad_one": ("name: [unclosed\n", CODE)})
    site.install("erp-good", plugins={"good_one": (manifest_text("good_one"), CODE)})
    catalog = Catalog.load(use_cache=False)
    assert "invalid YAML" in ours(catalog, "bad_one").errors[0]
    assert "plugin.yaml" in ours(catalog, "bad_one").errors[0]
    assert ours(catalog, "good_one").errors == ()


def test_missing_manifest_is_named(site, manifest_text) -> None:
    info = site.install("erp-nomani", plugins={"no_mani": (manifest_text("no_mani"), CODE)})
    (info.parent / "erp_nomani" / "no_mani" / "plugin.yaml").unlink()
    rec = ours(Catalog.load(use_cache=False), "no_mani")
    assert rec.errors[0].endswith("erp_nomani/no_mani/plugin.yaml: cannot read: No such file or directory")
    # a distribution that never shipped one
    record = info / "RECORD"
    record.write_text("".join(ln for ln in record.read_text().splitlines(True) if "plugin.yaml" not in ln))
    rec = ours(Catalog.load(use_cache=False), "no_mani")
    assert "erp-nomani: no plugin.yaml next to module erp_nomani.no_mani.plugin" in rec.errors[0]


def test_two_distributions_claiming_one_name_are_both_reported(site, manifest_text) -> None:
    site.install("erp-first", plugins={"twin": (manifest_text("twin"), CODE)})
    site.install("erp-second", plugins={"twin": (manifest_text("twin"), CODE)})
    twins = [r for r in Catalog.load(use_cache=False).records if r.name == "twin"]
    assert {r.distribution for r in twins} == {"erp-first", "erp-second"}
    for r in twins:
        assert any("claimed by erp-first and erp-second" in e for e in r.errors)


def test_dependencies_missing_mismatched_and_cycles(site, manifest_text) -> None:
    site.install("erp-a", plugins={"dep_a": (manifest_text("dep_a", extra="dependencies: [dep_b]\n"), CODE)})
    site.install("erp-b", plugins={"dep_b": (manifest_text("dep_b", extra="dependencies: [dep_c]\n"), CODE)})
    site.install("erp-c", plugins={"dep_c": (manifest_text("dep_c", extra="dependencies: [dep_a]\n"), CODE)})
    site.install("erp-d", plugins={"dep_d": (manifest_text("dep_d", extra="dependencies: ['dep_e>=2']\n"), CODE)})
    site.install("erp-e", plugins={"dep_e": (manifest_text("dep_e", "1.0.0"), CODE)})
    needs_missing = "dependencies: ['no-such-dist>=1']\n"
    site.install("erp-f", plugins={"dep_f": (manifest_text("dep_f", extra=needs_missing), CODE)})
    site.install("erp-g", plugins={"dep_g": (manifest_text("dep_g", extra="dependencies: ['pluggy>=999']\n"), CODE)})
    needs_invalid = "dependencies: [dep_d, 'pluggy>=1']\n"
    site.install("erp-h", plugins={"dep_h": (manifest_text("dep_h", extra=needs_invalid), CODE)})
    catalog = Catalog.load(use_cache=False)
    for member in ("dep_a", "dep_b", "dep_c"):
        assert any("dependency cycle among plugins: dep_a -> dep_b -> dep_c -> dep_a" in e
                   for e in ours(catalog, member).errors)
    assert "needs plugin dep_e>=2, but dep_e 1.0.0 is installed" in ours(catalog, "dep_d").errors[0]
    assert "pip install 'no-such-dist>=1'" in ours(catalog, "dep_f").errors[0]
    assert "but pluggy" in ours(catalog, "dep_g").errors[0]
    assert ours(catalog, "dep_h").errors == ("depends on plugin dep_d, which is invalid (see its errors)",)
    assert ours(catalog, "dep_e").errors == ()


def test_activation_order_puts_dependencies_first(site, manifest_text) -> None:
    site.install("erp-top", plugins={"top": (manifest_text("top", extra="dependencies: [mid]\n"), CODE)})
    site.install("erp-mid", plugins={"mid": (manifest_text("mid", extra="dependencies: [base]\n"), CODE)})
    site.install("erp-base", plugins={"base": (manifest_text("base"), CODE)})
    catalog = Catalog.load(use_cache=False)
    assert catalog.activation_order(["top", "base", "mid"]) == ["base", "mid", "top"]
    assert catalog.dependents("base") == ["mid"]


def test_hook_without_declared_permission_is_invalid(site, manifest_text) -> None:
    extra = "hooks: [{name: ai_request, method: answer}]\n"
    site.install("erp-perm", plugins={"perm_less": (manifest_text("perm_less", extra=extra), CODE)})
    rec = ours(Catalog.load(use_cache=False), "perm_less")
    assert "ai_request needs permission 'ai.generate', which permissions does not declare" in rec.errors[0]


def test_cache_hit_and_invalidation_on_install_upgrade_and_removal(site, manifest_text, monkeypatch) -> None:
    import erp_plugins_core._discovery as discovery

    monkeypatch.setattr(discovery, "_RACY_SECONDS", 0.0)  # the racy-clean window is tested below
    site.install("erp-cached", plugins={"cached_one": (manifest_text("cached_one"), CODE)})
    first = discover()
    assert not first.from_cache and "cached_one" in names(first)
    second = discover()
    assert second.from_cache and names(second) == names(first)
    # install: a new .dist-info appears within the same second
    site.install("erp-new", plugins={"new_one": (manifest_text("new_one"), CODE)})
    third = discover()
    assert not third.from_cache and "new_one" in names(third)
    # upgrade: version folder replaced
    info = next(site.root.glob("erp_cached-1.0.0.dist-info"))
    shutil.rmtree(info)
    shutil.rmtree(site.root / "erp_cached")
    site.install("erp-cached", "1.1.0", plugins={"cached_one": (manifest_text("cached_one", "1.1.0"), CODE)})
    fourth = discover()
    assert not fourth.from_cache
    assert next(r for r in fourth.records if r.name == "cached_one").dist_version == "1.1.0"
    # removal
    shutil.rmtree(next(site.root.glob("erp_new-*.dist-info")))
    fifth = discover()
    assert "new_one" not in names(fifth)


def test_cache_is_not_trusted_within_the_racy_window(site, manifest_text) -> None:
    site.install("erp-racy", plugins={"racy_one": (manifest_text("racy_one"), CODE)})
    discover()
    assert not discover().from_cache  # the site dir changed less than 2 s before the cache was written


def test_edited_manifest_invalidates_cache(site, manifest_text, monkeypatch) -> None:
    import erp_plugins_core._discovery as discovery

    monkeypatch.setattr(discovery, "_RACY_SECONDS", 0.0)
    site.install("erp-edit", plugins={"edit_one": (manifest_text("edit_one"), CODE)})
    discover()
    path = site.root / "erp_edit" / "edit_one" / "plugin.yaml"
    time.sleep(0.01)
    path.write_text(manifest_text("edit_one", extra="description: edited\n"))
    found = discover()
    assert not found.from_cache
    assert next(r for r in found.records if r.name == "edit_one").manifest.description == "edited"


def test_a_hard_link_to_a_stamped_file_keeps_its_stamp_and_an_edit_changes_it(tmp_path) -> None:
    from erp_plugins_core._cachefile import fingerprint

    manifest = tmp_path / "plugin.yaml"
    manifest.write_text("name: linked\n")
    before = fingerprint([str(manifest)], [str(tmp_path)])
    os.link(manifest, tmp_path.parent / f"{tmp_path.name}-link.yaml")  # as a sandbox's runtime site does: ctime moves
    after = fingerprint([str(manifest)], [str(tmp_path)])
    assert after["manifests"] == before["manifests"]
    mtime = manifest.stat().st_mtime_ns
    manifest.write_text("name: edited again\n")
    os.utime(manifest, ns=(mtime, mtime))  # same mtime, other size
    assert fingerprint([str(manifest)])["manifests"] != before["manifests"]
    (tmp_path / "new").mkdir()  # a folder's stamp still moves with its entries
    assert fingerprint([], [str(tmp_path)])["folders"] != before["folders"]


def test_cache_hit_gives_the_same_validated_catalog_with_manifests_built_on_access(site, manifest_text,
                                                                                    monkeypatch) -> None:
    import erp_plugins_core._catalog as catalog_module
    import erp_plugins_core._discovery as discovery

    monkeypatch.setattr(discovery, "_RACY_SECONDS", 0.0)
    site.install("erp-lazy", plugins={"lazy_one": (manifest_text("lazy_one", extra="dependencies: ['pluggy>=999']\n"),
                                                   CODE)})
    site.install("erp-fine", plugins={"fine_one": (manifest_text("fine_one", extra="description: fine\n"), CODE)})
    fresh = Catalog.load()
    assert not fresh.discovery.from_cache
    checked: list[int] = []
    real = catalog_module.validate_discovery
    monkeypatch.setattr(catalog_module, "validate_discovery", lambda found: checked.append(1) or real(found))
    cached = Catalog.load()
    assert cached.discovery.from_cache and cached.discovery.validated
    assert checked == []  # the cache holds the records as validated, dependency errors included
    lazy = ours(cached, "lazy_one")
    assert lazy._manifest is None and lazy._manifest_data is not None
    assert "but pluggy" in " ".join(lazy.errors)
    assert [r.name for r in cached.records] == [r.name for r in fresh.records]
    for a, b in zip(cached.records, fresh.records, strict=True):
        assert a == b  # field by field, manifests included (built now)
    assert ours(cached, "fine_one").manifest.description == "fine"
    assert lazy._manifest is not None and lazy._manifest_data is None


def test_a_corrupt_cache_file_is_a_miss(site, manifest_text, monkeypatch) -> None:
    import erp_plugins_core._discovery as discovery

    monkeypatch.setattr(discovery, "_RACY_SECONDS", 0.0)
    site.install("erp-corrupt", plugins={"corrupt_one": (manifest_text("corrupt_one"), CODE)})
    discover()
    path = discovery.cache_path()
    assert path is not None and path.exists()
    path.write_bytes(b"\xc1 not msgpack")
    found = discover()
    assert not found.from_cache and "corrupt_one" in names(found)
    assert discover().from_cache  # rewritten


def test_versions_cover_plugin_distributions_and_manifest_requirements(site, manifest_text) -> None:
    import importlib.metadata as md

    text = manifest_text("req_one", "1.2.3", extra="dependencies: ['pluggy>=1']\n")
    site.install("erp-req", "1.2.3", plugins={"req_one": (text, CODE)})
    found = scan()
    assert found.installed_version("erp-req") == "1.2.3"
    assert found.installed_version("Pluggy") == md.version("pluggy")
    assert found.installed_version("no-such-dist") is None


def test_an_entry_point_naming_a_module_missing_from_its_distribution_is_invalid(site, manifest_text) -> None:
    """Found from the distribution's file list (RECORD), without importing anything."""
    info = site.install("erp-gone", plugins={"gone_one": (manifest_text("gone_one"), CODE)})
    (info / "entry_points.txt").write_text("[erp_plugins]\ngone_one = erp_gone.gone_one.missing:Plugin\n")
    site.install("erp-there", plugins={"there_one": (manifest_text("there_one"), CODE)})
    catalog = Catalog.load(use_cache=False)
    assert any("module erp_gone.gone_one.missing is not among the distribution's files (RECORD)" in e
               for e in ours(catalog, "gone_one").errors), ours(catalog, "gone_one").errors
    assert ours(catalog, "there_one").errors == ()
    assert not any(m.startswith(("erp_gone", "erp_there")) for m in sys.modules)
    from erp_plugins_core._catalog import deep_check

    report = deep_check(ours(catalog, "gone_one"))
    assert not report.valid and any("erp_gone.gone_one.missing" in e for e in report.errors)


# --- A distribution's Name and Version from its header lines, as the email parser gives them -------------------

_LINES = ["Name: erp-a", "name:erp-b ", "NAME:\terp-c", "Version: 1.0", "version:2.0\t", "Version:", "Name:",
          "Metadata-Version: 2.1", "Summary: x: y", " folded", "\tfolded", "From someone", ":no name", "Bad Line",
          "Näme: erp-d", "Name : erp-e", "", "Version: 3\r", "Description: body", "Name: erp-f\x0c"]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(_LINES), max_size=8), st.booleans())
def test_name_and_version_read_plainly_are_what_the_email_parser_gives(lines, trailing_newline) -> None:
    import email
    from importlib.metadata import _adapters

    text = "\n".join(lines) + ("\n" if trailing_newline else "")
    plain = _plain_name_version(text)
    meta = _adapters.Message(email.message_from_string(text))
    if plain is not None:
        assert plain == (meta["Name"] or "", meta["Version"] or "")


def test_a_plugin_distributions_name_and_version_are_read_plainly_and_odd_ones_by_the_email_parser(site) -> None:
    import importlib.metadata as md

    info = site.install("erp-plain", "1.2.3")
    dist = md.PathDistribution(info)
    assert _plain_name_version(dist.read_text("METADATA")) == ("erp-plain", "1.2.3") == _name_version(dist)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: erp-folded\nVersion: 1.2\n  .3\n")
    assert _plain_name_version(dist.read_text("METADATA")) is None  # a folded value: the email parser reads it
    assert _name_version(dist) == (dist.metadata["Name"], dist.metadata["Version"])  # however odd: "      1.2\n.3"
    assert _name_version(dist)[0] == "erp-folded"
