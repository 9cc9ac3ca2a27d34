#!/usr/bin/env bash
# Install natsgate and run the demo: the gateway, an embedded nats-server and demo data.
# Open the printed address and log in as alice or bob with the printed password.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e .
exec .venv/bin/natsgate demo "$@"
