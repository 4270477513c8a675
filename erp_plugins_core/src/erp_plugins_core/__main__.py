"""The `erp-plugins` script (and `python -m erp_plugins_core`): `list` from the discovery cache when it holds
(`_listing`), `[COMMAND ...] --help` from the help cache (`_helptext`), every other case through the click command
line (`_cli`).

This module, `_listing` and `_helptext` import nothing heavy, so a cached answer costs about an interpreter start;
click, discovery and the manifest model load only when the command line needs them.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `erp-plugins` script; `argv` defaults to the process's arguments."""
    from ._listing import run

    args = sys.argv[1:] if argv is None else argv
    code = run(args)
    if code is None:
        from ._helptext import answer

        code = answer(args)
    if code is not None:
        sys.exit(code)
    from ._cli import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    main()
