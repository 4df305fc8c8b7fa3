#!/usr/bin/env bash
# Run every check and test: lint, types, schema, pytest (unit, gRPC, end to end, processes),
# the web client's tests and build, and the real-browser end-to-end tests.
# Installs whatever is missing first (Python venv, npm packages, Debian chromium and
# redis-server).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/bootstrap.sh browser
export PATH="$root/.venv/bin:$PATH"

echo "==> ruff, mypy --strict"
ruff check .
ruff format --check .
python tools/typecheck.py

echo "==> pytest"
pytest "$@"

if [ -f webclient/package.json ]; then
  echo "==> web client: typecheck, unit tests, build"
  (cd webclient && npm run typecheck --silent && npm test --silent && npm run build --silent)
fi
if [ -f webclient/e2e/run.mjs ]; then
  echo "==> web client: end to end in headless chromium"
  (cd webclient && node e2e/run.mjs)
fi
