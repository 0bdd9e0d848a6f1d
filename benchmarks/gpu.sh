#!/usr/bin/env bash
# Every GPU figure in one JSON file; the sections' time limits keep it under 8 minutes on one H100 (docs/gpu.md):
#
#   bash benchmarks/gpu.sh                 # -> $OUT/gpu.json (OUT defaults to ./gpu-out), logs in $OUT/gpu-logs/
#   OUT=/tmp/x bash benchmarks/gpu.sh --cpu-smoke   # extra arguments go to benchmarks/gpu.py
#
# A thin wrapper: it finds a Python with torch ($PYTHON, else python3), makes `diagnose` importable without
# downloading anything (pip install -e . --no-deps --no-build-isolation; failing that, a link tree on
# PYTHONPATH), then runs benchmarks/gpu.py, which times and records every section itself.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu-out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"

if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "error: $PY has no torch; set PYTHON to an interpreter that has it" >&2
    exit 1
fi
if ! "$PY" -c "import diagnose.kernels, diagnose.engines" 2>/dev/null; then
    echo "# diagnose is not importable: pip install -e . (no dependencies, no build isolation)"
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . ||
        "$PY" -m pip install -q --no-deps --no-build-isolation --break-system-packages -e . ||
        true
fi
if ! "$PY" -c "import diagnose.kernels, diagnose.engines" 2>/dev/null; then
    # the package maps kernels/ to diagnose.kernels (pyproject.toml): rebuild that layout out of links
    shim="$(mktemp -d)"
    mkdir "$shim/diagnose"
    for entry in "$PWD"/diagnose/*; do ln -s "$entry" "$shim/diagnose/"; done
    ln -s "$PWD/kernels" "$shim/diagnose/kernels"
    export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
    echo "# pip install failed: diagnose from a link tree ($shim) on PYTHONPATH"
fi
"$PY" -c "import diagnose.kernels" || { echo "error: diagnose cannot be imported" >&2; exit 1; }

exec "$PY" benchmarks/gpu.py --out "$OUT/gpu.json" "$@"
