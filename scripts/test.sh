#!/usr/bin/env bash
# Prepare the machine (idempotent, fast when already done) and run the test
# suite; extra arguments go to pytest (e.g. scripts/test.sh -k verify -x).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest -q tests "$@"
