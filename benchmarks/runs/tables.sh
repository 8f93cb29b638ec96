#!/usr/bin/env bash
# The frontier tables, plots and per-speedup bar check of every saved run, measuring nothing but
# the uncached references. Files go in run order: for each budget the last refined run wins
# (`frontier.latest_refined`), and a later run restarted from the earlier ones' plans.
# Usage: bash benchmarks/runs/tables.sh [extra frontier.py args, e.g. --results]
set -euo pipefail
cd "$(dirname "$0")/../.."
R=benchmarks/runs
# Within one glob the files are of different budgets, so their order there does not matter.
files=("$R/anchors.json" "$R/clips_4seeds.json" "$R"/clips_dc05_*.json
       "$R/digits_8seeds_18_14.json" "$R/digits_8seeds_17_11_9_8_7.json" "$R/digits_8seeds_16_15_13_12_10.json"
       "$R"/digits_8seeds_restart_*.json "$R"/digits_8seeds_restart2_*.json "$R"/digits_8seeds_dc05_*.json)
exec "${PYTHON:-python}" benchmarks/frontier.py --models digits clips --per-class 2 --steps 28 --families \
    --merge "${files[@]}" --plot-dir benchmarks "$@"
