#!/usr/bin/env bash
# The README's main job: set up .venv with the four distributions, then list and check the installed
# plugins, enable Ollama and OpenAI providers for a demo tenant (against loopback servers that speak their
# wire protocols, since no real service is reachable here), call hooks with fallback, stream, check health.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
export PATH="$PWD/.venv/bin:$PATH"
work=$(mktemp -d)
trap 'exec 3>&- 4>&-; rm -rf "$work"' EXIT
export ERP_PLUGINS_STATE="$work/state.db"
export ERP_PLUGINS_SECRET_KEY_FILE="$work/secret.key"
python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())" > "$ERP_PLUGINS_SECRET_KEY_FILE"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@" || echo "(exit $?)"; }

step erp-plugins list
step erp-plugins check

# loopback stand-ins for Ollama and OpenAI: each prints its URL and serves until its stdin (fd 3/4) closes
export OPENAI_API_KEY="sk-demo-key-never-printed"
exec 3> >(exec python tests/servers/ollama_fake.py > "$work/ollama.url")
exec 4> >(exec python tests/servers/openai_fake.py --api-key "$OPENAI_API_KEY" > "$work/openai.url")
for f in ollama openai; do until [ -s "$work/$f.url" ]; do sleep 0.1; done; done
ollama_url=$(cat "$work/ollama.url")
openai_url=$(cat "$work/openai.url")

step erp-plugins enable local_llm_provider --tenant demo --priority 1 \
  --config host="$ollama_url" --config model=llama3.2
step erp-plugins enable openai_provider --tenant demo --priority 2 \
  --config api_key=env:OPENAI_API_KEY --config base_url="$openai_url" --config model=gpt-4o-mini
step erp-plugins list --tenant demo
step erp-plugins call ai_request --tenant demo --arg prompt="Summarise invoice 42"
step erp-plugins call ai_stream --tenant demo --arg prompt="Stream a haiku"
step erp-plugins call ai_embedding --tenant demo --args-json '{"texts": ["invoice", "receipt"]}' --json
step erp-plugins health --tenant demo
step erp-plugins config show openai_provider --tenant demo
step erp-plugins disable local_llm_provider --tenant demo
step erp-plugins audit --tenant demo
