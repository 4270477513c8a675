#!/usr/bin/env bash
# The README's main job: set up .venv with the four distributions, then list and check the installed
# plugins, enable Ollama and OpenAI providers for a demo tenant (against loopback servers that speak their
# wire protocols, since no real service is reachable here), call hooks with fallback, stream, check health;
# then serve the HTTP API: a token, a hook call over HTTP, the official OpenAI client against the tenant's
# providers, an event stored and delivered, a change made by the CLI that the running server follows.
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

# the HTTP API: a server process on a free loopback port, following the same state as the CLI
token=$(erp-plugins token create --tenant demo --scope admin --json | python -c "import json,sys; print(json.load(sys.stdin)['token'])")
port=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
erp-plugins serve --bind "127.0.0.1:$port" 2> "$work/serve.log" &
serve_pid=$!
trap 'kill $serve_pid 2>/dev/null || true; exec 3>&- 4>&-; rm -rf "$work"' EXIT
python - "$port" <<'PY'
import sys, time, httpx
for _ in range(200):
    try:
        if httpx.get(f"http://127.0.0.1:{sys.argv[1]}/readyz").status_code == 200:
            break
    except httpx.HTTPError:
        time.sleep(0.1)
PY
export DEMO_PORT=$port DEMO_TOKEN=$token
http() { python - "$@" <<'PY'
import json, os, sys, httpx
method, path, *body = sys.argv[1:]
r = httpx.request(method, f"http://127.0.0.1:{os.environ['DEMO_PORT']}{path}", timeout=60,
                  headers={"Authorization": f"Bearer {os.environ['DEMO_TOKEN']}"}, json=json.loads(body[0]) if body else None)
print(r.status_code, json.dumps(r.json(), indent=2) if r.headers.get("content-type", "").endswith("json") else r.text)
PY
}
step http POST /v1/tenants/demo/hooks/ai_request/first '{"prompt": "Summarise invoice 42 over HTTP", "context": {}}'
printf '\n\033[1m$ python: openai.OpenAI(base_url=.../v1/openai).chat.completions.create(...)\033[0m\n'
python - <<'PY'
import os, openai
client = openai.OpenAI(base_url=f"http://127.0.0.1:{os.environ['DEMO_PORT']}/v1/openai", api_key=os.environ["DEMO_TOKEN"])
reply = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Hello through the tenant"}])
print(reply.choices[0].message.content)
PY
step http POST /v1/tenants/demo/events '{"event_type": "invoice.created", "data": {"id": 42}}'
step erp-plugins events --tenant demo
step erp-plugins enable local_llm_provider --tenant demo --priority 0 --config host="$ollama_url" --config model=llama3.2
step http GET /v1/tenants/demo/plugins
kill $serve_pid; wait $serve_pid 2>/dev/null || true
