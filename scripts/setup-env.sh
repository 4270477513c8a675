#!/usr/bin/env bash
# Create .venv (if missing) with the four distributions installed editable (the core with its postgres and
# server extras), plus the dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt \
  -e './erp_plugins_core[postgres,server]' -e ./erp_plugin_openai -e ./erp_plugin_ollama -e ./erp_plugin_google
