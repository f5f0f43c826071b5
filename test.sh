#!/usr/bin/env bash
# The whole test suite. Runs ./setup.sh first (a no-op when nothing changed), so it works
# on a fresh machine. Extra arguments go to pytest, e.g. ./test.sh -k schema
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh >&2
exec .venv/bin/python -m pytest "$@"
