#!/usr/bin/env bash
# The README's test command: set up .venv and run every test (unit, sandbox, end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
exec .venv/bin/python -m pytest "$@"
