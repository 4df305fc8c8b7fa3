#!/usr/bin/env bash
# Run the product: install what is missing, build the web client if it changed, then
# `aistream up` (generator + bridge + web client) and print the URL to open.
# Arguments go to `aistream up`, e.g. scripts/run.sh --port 9000.
# With no OPENAI_BASE_URL / OPENAI_API_KEY set, the embedded simulated model answers.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/bootstrap.sh
if [ -f webclient/package.json ]; then
  stamp=webclient/dist/.source-hash
  want=$(find webclient/src webclient/index.html webclient/package-lock.json webclient/vite.config.ts \
    -type f -print0 2>/dev/null | sort -z | xargs -0 cat | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "==> building the web client" >&2
    (cd webclient && npm run build --silent)
    echo "$want" > "$stamp"
  fi
fi
exec .venv/bin/aistream up "$@"
