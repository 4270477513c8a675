#!/usr/bin/env bash
# The README's test command: set up .venv and run every test (unit, sandbox, PostgreSQL, server, browser,
# end-to-end from wheels). Tests run in parallel processes (pytest-xdist), each file on one of them, so a
# file's module fixtures (built wheels, a PostgreSQL cluster per process) are made once;
# ERP_PLUGINS_TEST_PROCESSES sets how many (default 4: most tests wait on subprocesses, not on a core).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
exec .venv/bin/python -m pytest -p xdist -n "${ERP_PLUGINS_TEST_PROCESSES:-4}" --dist loadfile "$@"
