#!/usr/bin/env bash
# Install everything the tests need, then run every test: lint, types, the browser
# library's unit tests, and the Python suite (pure, real nats-server, real Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing chromium (Debian package) for the browser tests"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

echo "== Python environment (.venv)"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev]'

echo "== browser library: install, type-check, unit tests"
(cd client && { [ -f package-lock.json ] && npm ci --no-audit --no-fund --silent || npm install --no-audit --no-fund --silent; })
(cd client && npx tsc -p tsconfig.json && node --test test/)
(cd client && npx tsc -p tsconfig.consumer.json) # a TypeScript app against the .d.ts just emitted into client/types/
(cd client && npx tsc -p ../demo/tsconfig.json) # the demo (demo/app.js, demo/js/*.js), checked against the library
(cd client && npx tsc -p ../admin/tsconfig.json) # the admin console (admin/console.js, admin/js/*.js)

echo "== lint and types"
.venv/bin/ruff check src tests $([ -d bench ] && echo bench)
.venv/bin/ruff format --check src
.venv/bin/mypy

echo "== Python tests"
.venv/bin/python -m pytest "$@"
