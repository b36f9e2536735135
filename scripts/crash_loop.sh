#!/usr/bin/env bash
# The crash test of issue 22 in a loop, on a loaded machine:
#   test_a_worker_killed_before_acking_yields_the_same_verdicts_without_scoring_twice[TRANSPORT]
# N times, each in a fresh pytest session (fresh emulator / broker), with one busy loop per
# core beside it. Prints each run's verdict and its redelivery line (SIGKILL -> successor
# started -> first redelivery -> every arrival answered, and the bound from the settings),
# then runs / failures and min / median / max of each time. A failed run's pytest output
# and worker logs (with every Pub/Sub lease event: CONTRACT_WORKER_LOG_LEVEL=DEBUG) stay in
# OUT/run-<i>/.
#
#   scripts/crash_loop.sh [N=20] [TRANSPORT=pubsub]     LOAD=0 for no busy loops, OUT=dir
set -euo pipefail

runs=${1:-20}
transport=${2:-pubsub}
load=${LOAD:-$(nproc)}
out=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/crash-loop-$transport.XXXX")}
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
test="tests/contract/test_transport_contract.py::test_a_worker_killed_before_acking_yields_the_same_verdicts_without_scoring_twice[$transport]"

busy=()
stop_load() {
    for pid in "${busy[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop_load EXIT
for _ in $(seq "$load"); do
    python3 -c 'while True: pass' &
    busy+=("$!")
done

mkdir -p "$out"
echo "crash loop: $runs runs of $transport, $load busy loops, logs in $out"
echo "before: $(uptime)"
failures=0
: >"$out/lines"
for i in $(seq "$runs"); do
    dir="$out/run-$i"
    mkdir -p "$dir"
    if (cd "$root" && CONTRACT_WORKER_LOG_LEVEL=DEBUG PYTHONPATH="$root" \
        "$python" -m pytest -s -q -p no:cacheprovider --basetemp="$dir/tmp" "$test") >"$dir/pytest.log" 2>&1; then
        verdict=passed
        rm -rf "$dir/tmp"  # keep the logs of failed runs only
    else
        verdict=FAILED
        failures=$((failures + 1))
    fi
    line=$(grep -h "redelivery after SIGKILL" "$dir/pytest.log" || true)
    [ -n "$line" ] && echo "$line" >>"$out/lines"
    echo "run $i/$runs $verdict ${line:-(no redelivery line: see $dir/pytest.log)} | load $(cut -d' ' -f1-3 /proc/loadavg)"
done
echo "after: $(uptime)"
echo "$transport: $runs runs, $failures failed"
"$python" - "$out/lines" <<'EOF'
import re
import statistics
import sys

stages = ("successor started", "first redelivery", "every arrival answered")
values: dict[str, list[float]] = {stage: [] for stage in stages}
for line in open(sys.argv[1]):
    for stage in stages:
        found = re.search(rf"{stage} ([0-9.]+)s", line)
        if found:
            values[stage].append(float(found.group(1)))
for stage, seen in values.items():
    if seen:
        print(
            f"  SIGKILL -> {stage}: min {min(seen):.1f}s, median {statistics.median(seen):.1f}s, "
            f"max {max(seen):.1f}s ({len(seen)} runs)"
        )
EOF
[ "$failures" -eq 0 ]
