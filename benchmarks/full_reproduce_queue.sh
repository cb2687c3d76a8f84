#!/usr/bin/env bash
# `reparam reproduce --full`, one method after another, each in its own folder LONG/v4-METHOD, one torch
# thread, niced; a method already finished is skipped, one that another queue is running is left to it
# (LONG/v4-METHOD.lock), and a killed one is resumed (job by job where the method caches its jobs). Meant to
# run in the background beside other work, at most two queues at a time on 2 cores.
#
#   benchmarks/full_reproduce_queue.sh LONG METHOD [METHOD ...]
#   benchmarks/full_reproduce_queue.sh LONG --after PATTERN METHOD ...   # first wait until no process matches
#
# PATTERN is a `pgrep -f` regex; write its first letter in brackets ("[r]eproduce --full --methods trp") so
# that it does not match this script's own command line.
#
# The code is that of the checkout this script lives in (PYTHONPATH=its src), so a snapshot worktree keeps a
# long run on one commit while main moves on. REPARAM=path/to/reparam overrides the console script.
# To carry a run over to a new machine: copy LONG/v4-METHOD(.partial) folders back (see
# docs/results/reproduce-full/work/README.md) and start the same command again.
set -u
long=${1:?usage: full_reproduce_queue.sh LONG [--after PATTERN] METHOD ...}; shift
if [ "${1:-}" = "--after" ]; then
  while pgrep -f -- "$2" >/dev/null; do sleep 60; done
  shift 2
fi
here=$(cd "$(dirname "$0")/.." && pwd)
reparam=${REPARAM:-$here/.venv/bin/reparam}
export PYTHONPATH=$here/src REPARAM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$long"
cd "$here" || exit 2
for m in "$@"; do
  out=$long/v4-$m
  [ -d "$out" ] && continue                      # finished
  mkdir "$out.lock" 2>/dev/null || continue      # another queue has it (atomic claim; remove a stale lock by hand)
  if [ -d "$out.partial" ]; then arg=(--resume "$out"); else arg=(--out "$out"); fi
  echo "$(date -u +%FT%TZ) start $m (commit $(git rev-parse --short HEAD))" >> "$long/queue.log"
  nice -n 15 /usr/bin/time -v "$reparam" reproduce --full --methods "$m" "${arg[@]}" --no-progress \
    >> "$long/v4-$m.log" 2>&1
  echo "$(date -u +%FT%TZ) end $m rc=$?" >> "$long/queue.log"
  rmdir "$out.lock"
done
