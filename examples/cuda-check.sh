#!/usr/bin/env bash
# The CUDA path, in one go on a machine with a GPU: tests/test_device.py with CUDA tensors, then
# the benchmarks with their tensors on the GPU. Writes test-device-cuda.json (with the pytest
# junit XML beside it) and bench-*-cuda.json / lattice-geometry-cuda.json into $1 (default
# results/). Runs from src/ with the python3 on PATH, which needs torch and constriction
# (vector-quantize-pytorch for the peer rows); nothing is installed. Where the tree is a copy
# (its .git missing or stale), set QLATENT_COMMIT to the commit it was copied from: provenance
# records that commit.
# Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-results}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export QLATENT_TEST_DEVICE=${QLATENT_TEST_DEVICE:-cuda}
device=$QLATENT_TEST_DEVICE
status=0

# step LIMIT_S COMMAND...: run COMMAND for at most LIMIT_S seconds (STEP_SCALE multiplies every
# limit), record a failure and go on
step() {
    local limit=$(( $1 * ${STEP_SCALE:-1} )) started=$SECONDS rc=0
    shift
    echo "== $* (at most $limit s)"
    timeout "$limit" "$@" || rc=$?
    [ $rc -eq 0 ] || { echo "== FAILED (exit $rc): $*"; status=1; }
    echo "== $((SECONDS - started)) s"
}

tests_cmd=("$py" -m pytest -q -p no:cacheprovider tests/test_device.py
    --junitxml "$out/test-device-cuda.xml")
step 180 "${tests_cmd[@]}"
step 30 "$py" - "$out/test-device-cuda.xml" "$out/test-device-cuda.json" "${tests_cmd[*]}" <<'EOF'
"""The junit XML of the device tests as a results JSON with provenance."""
import sys
import xml.etree.ElementTree as ET

from qlatent.results import provenance, write_json

xml, out, command = sys.argv[1:4]
cases = []
for case in ET.parse(xml).getroot().iter("testcase"):
    outcome = "passed"
    detail = None
    for tag in ("failure", "error", "skipped"):
        node = case.find(tag)
        if node is not None:
            outcome = "skipped" if tag == "skipped" else "failed"
            detail = " ".join((node.get("message") or "").split())[:500]
    cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                  "time_s": float(case.get("time") or 0), **({"detail": detail} if detail else {})})
counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "skipped")}
write_json({**provenance(command), **counts, "failures": [c for c in cases if c["outcome"] != "passed"],
            "cases": cases}, out)
print(counts)
EOF
step 150 "$py" -m qlatent bench lattice --device "$device" --output "$out/bench-lattice-cuda.json"
step 120 "$py" -m qlatent bench quantizers --device "$device" --budget 0.5 \
    --output "$out/bench-quantizers-cuda.json"
step 120 "$py" -m qlatent bench lattices --device "$device" --no-steps \
    --output "$out/lattice-geometry-cuda.json"
step 90 "$py" -m qlatent bench lattice --device "$device" --scaling \
    --output "$out/bench-lattice-scaling-cuda.json"
exit $status
