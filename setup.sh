#!/usr/bin/env bash
# One-command set-up on a fresh machine: the real sample photos (Debian's darknet package,
# when run as root), Fashion-MNIST for training (Debian's dataset-fashion-mnist, as root),
# PostgreSQL for the PostgresTable tests (Debian's postgresql, as root), Chromium for the
# web UI's browser test (Debian's chromium, as root), a virtual environment in .venv, and
# every dependency of the framework, the app and the tests.
# Safe to run again: it skips what is already done.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -f /usr/share/darknet/data/dog.jpg ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's darknet package (real sample photos)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q darknet >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q darknet >/dev/null; }
  else
    echo "setup: warning: /usr/share/darknet/data is missing; run 'sudo apt-get install darknet' for the sample photos" >&2
  fi
fi
# Fashion-MNIST in its original IDX files (/usr/share/datasets/fashion-mnist), for training
# (python -m models.training) and `buildflow produce --dataset fashion-mnist`.
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's dataset-fashion-mnist package (Fashion-MNIST IDX files)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null; }
  else
    echo "setup: warning: Fashion-MNIST is missing; run 'sudo apt-get install dataset-fashion-mnist' for training and its tests" >&2
  fi
fi
# PostgreSQL server binaries for PostgresTable's integration tests (the test session starts
# its own server on 127.0.0.1 from a scratch folder; Debian's cluster service is not used).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's postgresql package (server for the PostgresTable tests)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; }
  else
    echo "setup: warning: PostgreSQL is missing; run 'sudo apt-get install postgresql' for the PostgresTable tests" >&2
  fi
fi

# Chromium for the web UI's browser test (Playwright drives Debian's build at
# /usr/bin/chromium; Playwright's own browser download is never used).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's chromium package (browser for the UI's browser test)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
  else
    echo "setup: warning: Chromium is missing; run 'sudo apt-get install chromium' for the UI's browser test" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi

stamp=.venv/.setup-stamp
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing dependencies (torch from the local wheel store; about a minute)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
  echo "$want" > "$stamp"
fi
# The local stack of the emulator environment (Pub/Sub, GCS, BigQuery fakes): Debian's Go
# toolchain and sources, our pstest build, the bqemulator venv. Idempotent; ~70 s cold.
if [ "${SETUP_SKIP_STACK:-0}" != 1 ]; then
  .venv/bin/python -m infra.stack install
fi
echo "setup: done. Activate with: source .venv/bin/activate"
