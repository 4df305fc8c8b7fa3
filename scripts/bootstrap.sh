#!/usr/bin/env bash
# Install everything aistream needs, idempotently; safe to run on every start.
#   scripts/bootstrap.sh          Python venv (.venv) with aistream + dev tools, web client packages
#   scripts/bootstrap.sh browser  also Debian's chromium (the real-browser tests) and
#                                 redis-server (the durable-stream tests start their own)
# Each step is skipped when what it installs is already current (stamp files in .venv/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

if [ ! -x .venv/bin/python ]; then
  say "creating the Python virtualenv (.venv)"
  "$python" -m venv .venv
fi
want=$(hash_of pyproject.toml)
if [ "$(cat .venv/.aistream-installed 2>/dev/null)" != "$want" ]; then
  say "installing aistream and its development tools into .venv"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  echo "$want" > .venv/.aistream-installed
fi

if [ -f webclient/package-lock.json ]; then
  want=$(hash_of webclient/package-lock.json)
  if [ ! -d webclient/node_modules ] || [ "$(cat .venv/.webclient-installed 2>/dev/null)" != "$want" ]; then
    say "installing the web client's npm packages"
    (cd webclient && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" > .venv/.webclient-installed
  fi
fi

if [ "${1:-}" = "browser" ]; then
  missing=""
  command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
  command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
  if [ -n "$missing" ]; then
    say "installing Debian's$missing for the tests"
    sudo_=""
    [ "$(id -u)" = 0 ] || sudo_="sudo"
    $sudo_ apt-get update -qq
    # (redis-server: the tests start their own servers on free ports; the package's service,
    # where an init system starts it, is not used)
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq $missing >/dev/null
  fi
fi
