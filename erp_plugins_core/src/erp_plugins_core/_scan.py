"""Code scan of a plugin distribution: risky calls and imports, with file and line, for `erp-plugins check`.

The scan is advice for the administrator, not a security boundary: Python code can always reach what a static scan
does not see (`getattr` on strings, code in data files, behaviour of its dependencies). What a sandboxed plugin can do
is decided by the sandbox alone; findings matter for plugins that would run in the host's process.

Detection is bandit's (run through its Python API, `# nosec` ignored, the assert check B101 off), plus one AST pass
for what bandit lacks: imports of modules outside an allow-list (the standard library minus `RISKY_MODULES`, the
plugin's own packages, `erp_plugins_core`, and the import names of the distribution's declared requirements) and
direct calls of `compile`, `__import__`, `importlib.import_module` and `open` (and `exec`/`eval` where bandit is
silent). Only the `.py` files the distribution's RECORD lists are scanned: editable installs have none, and files
added after installation are reported by the integrity check instead.
"""

from __future__ import annotations

import ast
import csv
import logging
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import Distribution, distributions
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

__all__ = ["RISKY_MODULES", "Finding", "allowed_imports", "scan_distribution"]

# Standard-library modules a plugin should not need, and which are flagged when imported: process spawning, native
# code, raw sockets, unsafe deserialisation, interpreter internals. Modules whose name starts with `_` are flagged too.
RISKY_MODULES: frozenset[str] = frozenset({
    "subprocess", "multiprocessing", "pty", "posix", "nt", "msvcrt", "winreg",  # processes, direct OS calls
    "ctypes", "mmap",                                                          # native code and memory
    "socket", "socketserver", "select", "selectors",                           # raw network
    "pickle", "shelve", "marshal",                                             # formats that run code when loaded
    "code", "codeop", "pdb", "bdb", "runpy",                                   # interpreter internals
})

RULE_IMPORT = "ERP001"
RULE_DYNAMIC_CODE = "ERP002"
RULE_DYNAMIC_IMPORT = "ERP003"
RULE_FILE_ACCESS = "ERP004"
RULE_UNREADABLE = "ERP005"

_BANDIT_SKIPPED = frozenset({"B101"})  # assert_used: asserts in plugin code are not a risk to the host
_BANDIT_LOCK = threading.Lock()  # BanditManager keeps class-level state; one scan at a time


@dataclass(frozen=True)
class Finding:
    """One risky construct: `file` relative to site-packages (as in RECORD), 1-based `line`, the rule id
    (`Bxxx` for bandit's checks, `ERPxxx` for ours) and what was found."""

    file: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.rule} {self.message}"


# --- what the distribution may import --------------------------------------------------------------------------


def _top_level_names(dist: Distribution) -> set[str]:
    declared = dist.read_text("top_level.txt")
    if declared:
        return {line.strip() for line in declared.splitlines() if line.strip()}
    record = dist.read_text("RECORD")  # parsed here: building `dist.files` costs ~30 ms for a 2000-file SDK
    paths = ([row[0] for row in csv.reader(record.splitlines()) if row] if record is not None
             else [file.as_posix() for file in dist.files or ()])
    names: set[str] = set()
    for path in paths:
        top, sep, _ = path.partition("/")
        if top in ("", "..") or top.endswith((".dist-info", ".egg-info", ".data")):
            continue
        if sep:
            names.add(top)
        elif top.endswith(".py"):
            names.add(top[:-3])
    return names


def _site_dir(dist: Distribution) -> Path:
    return Path(str(dist.locate_file("")))


def _requirement_import_names(dist: Distribution) -> set[str]:
    search = [str(_site_dir(dist)), *sys.path]
    names: set[str] = set()
    for text in dist.requires or ():
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        names.add(canonicalize_name(requirement.name).replace("-", "_"))
        for found in distributions(name=requirement.name, path=search):
            names |= _top_level_names(found)
            break
    return names


def allowed_imports(dist: Distribution) -> frozenset[str]:
    """Top-level module names `dist`'s code may import without a finding.

    The standard library except `RISKY_MODULES` and `_private` modules, `erp_plugins_core`, the distribution's own
    top-level packages, and the import names of its declared requirements (found on its own site directory first,
    then `sys.path`; a requirement that is not installed contributes its name with `-` read as `_`).
    """
    stdlib = {m for m in sys.stdlib_module_names if not m.startswith("_")} - RISKY_MODULES
    return frozenset(stdlib | {"__future__", "erp_plugins_core"} | _top_level_names(dist)
                     | _requirement_import_names(dist))


# --- our AST pass ----------------------------------------------------------------------------------------------

_DYNAMIC_CODE = frozenset({"exec", "eval", "compile"})
_QUALIFIED_CALLS: dict[tuple[str, str], tuple[str, str]] = {
    ("importlib", "import_module"): (RULE_DYNAMIC_IMPORT, "importlib.import_module() imports a module chosen at run "
                                                          "time; import it statically"),
    ("builtins", "open"): (RULE_FILE_ACCESS, "builtins.open() opens a file directly"),
    ("io", "open"): (RULE_FILE_ACCESS, "io.open() opens a file directly"),
    ("os", "open"): (RULE_FILE_ACCESS, "os.open() opens a file directly"),
    ("builtins", "exec"): (RULE_DYNAMIC_CODE, "builtins.exec() runs code built at run time"),
    ("builtins", "eval"): (RULE_DYNAMIC_CODE, "builtins.eval() runs code built at run time"),
    ("builtins", "__import__"): (RULE_DYNAMIC_IMPORT, "builtins.__import__() imports a module chosen at run time"),
}


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


class _Visitor(ast.NodeVisitor):
    """Collects (line, rule, message) for disallowed imports and risky builtin calls in one module."""

    def __init__(self, allowed: frozenset[str]) -> None:
        self.allowed = allowed
        self.found: list[tuple[int, str, str]] = []

    def _import(self, node: ast.stmt, module: str) -> None:
        top = module.split(".", 1)[0]
        if top in self.allowed:
            return
        if top in RISKY_MODULES:
            why = "a risky standard-library module"
        elif top in sys.stdlib_module_names:
            why = "a private standard-library module"
        else:
            why = "not the standard library, not this plugin, and not a declared requirement"
        self.found.append((node.lineno, RULE_IMPORT, f"import of {module!r} outside the allow-list ({why})"))

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):  # imports only type checkers see never run
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._import(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self._import(node, node.module)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name):
            if func.id in _DYNAMIC_CODE:
                self.found.append((node.lineno, RULE_DYNAMIC_CODE, f"{func.id}() runs code built at run time"))
            elif func.id == "__import__":
                self.found.append((node.lineno, RULE_DYNAMIC_IMPORT, "__import__() imports a module chosen at run "
                                                                     "time; import it statically"))
            elif func.id == "open":
                self.found.append((node.lineno, RULE_FILE_ACCESS, "open() opens a file directly; files passed to a "
                                                                  "hook are read through the files service"))
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            hit = _QUALIFIED_CALLS.get((func.value.id, func.attr))
            if hit is not None:
                self.found.append((node.lineno, *hit))
        self.generic_visit(node)


# --- bandit ----------------------------------------------------------------------------------------------------


def _run_bandit(paths: list[str]) -> tuple[list[object], list[tuple[str, str]]]:
    """bandit's issues and skipped files for `paths`, with bandit's logging and progress output silenced."""
    # Imported here: loading bandit and its plugins costs a few hundred milliseconds that `list` should not pay.
    with warnings.catch_warnings():  # bandit passes stevedore a deprecated argument when it loads its plugins
        warnings.simplefilter("ignore", DeprecationWarning)
        from bandit.core import config as b_config
        from bandit.core import manager as b_manager

    logger = logging.getLogger("bandit")
    saved = logger.level
    logger.setLevel(logging.CRITICAL + 1)  # also keeps the rich progress bar (shown at INFO) off
    try:
        with _BANDIT_LOCK:
            manager = b_manager.BanditManager(
                b_config.BanditConfig(), "file", quiet=True, ignore_nosec=True,
                profile={"include": set(), "exclude": set(_BANDIT_SKIPPED)},
            )
            manager.files_list = list(paths)  # set directly: discover_files drops paths containing ".git", ".tox"...
            manager.run_tests()
            return list(manager.get_issue_list()), list(manager.get_skipped())
    finally:
        logger.setLevel(saved)


# --- the scan --------------------------------------------------------------------------------------------------


def _python_files(dist: Distribution) -> Iterator[tuple[str, Path]]:
    for file in dist.files or ():
        rel = file.as_posix()
        if not rel.endswith(".py") or rel.startswith("../") or rel.split("/", 1)[0].endswith(".dist-info"):
            continue
        path = Path(str(file.locate()))
        if path.is_file():
            yield rel, path


def _covered_by_bandit(rule: str, bandit_rules: Iterable[str]) -> bool:
    if rule == RULE_IMPORT:
        return any(r.startswith("B4") for r in bandit_rules)  # B401-B415: bandit's import blacklist
    if rule == RULE_DYNAMIC_CODE:
        return any(r in ("B102", "B307") for r in bandit_rules)  # exec_used, eval blacklist
    return False


def scan_distribution(dist: Distribution) -> list[Finding]:
    """Findings for every `.py` file `dist`'s RECORD lists, sorted by file, line and rule.

    Files are paths relative to site-packages. A file that cannot be read or parsed is itself a finding (ERP005).
    """
    files = dict(_python_files(dist))
    if not files:
        return []
    by_abs = {str(path): rel for rel, path in files.items()}
    issues, skipped = _run_bandit(sorted(by_abs))

    findings: set[Finding] = set()
    bandit_at: dict[tuple[str, int], set[str]] = {}
    for issue in issues:
        rel = by_abs.get(str(issue.fname))  # type: ignore[attr-defined]
        if rel is None:
            continue
        line = int(issue.lineno)  # type: ignore[attr-defined]
        rule = str(issue.test_id)  # type: ignore[attr-defined]
        bandit_at.setdefault((rel, line), set()).add(rule)
        message = (f"{issue.text} (bandit {issue.test}, severity {issue.severity}, "  # type: ignore[attr-defined]
                   f"confidence {issue.confidence})")  # type: ignore[attr-defined]
        findings.add(Finding(rel, line, rule, message))
    for fname, reason in skipped:
        if "syntax error" not in reason and fname in by_abs:
            findings.add(Finding(by_abs[fname], 0, RULE_UNREADABLE, f"bandit could not scan it: {reason}"))

    allowed = allowed_imports(dist)
    for rel, path in sorted(files.items()):
        try:
            tree = ast.parse(path.read_bytes(), filename=rel)
        except SyntaxError as exc:
            findings.add(Finding(rel, exc.lineno or 0, RULE_UNREADABLE, f"cannot be parsed: {exc.msg}"))
            continue
        except (OSError, ValueError) as exc:
            findings.add(Finding(rel, 0, RULE_UNREADABLE, f"cannot be read: {exc}"))
            continue
        visitor = _Visitor(allowed)
        visitor.visit(tree)
        for line, rule, message in visitor.found:
            if not _covered_by_bandit(rule, bandit_at.get((rel, line), ())):
                findings.add(Finding(rel, line, rule, message))
    return sorted(findings, key=lambda f: (f.file, f.line, f.rule, f.message))
