#!/usr/bin/env bash
# One-shot GPU check of rubric-rl, for a CUDA machine with torch, transformers, peft and accelerate installed
# and no internet. In under 8 minutes: a bf16 influence benchmark (SmolLM2-135M-Instruct if it is here, and a
# larger tiny model; samples/s and the ratio to one batched forward+backward), a 3-step real `train` on CUDA,
# and `score` sharded over the devices (accelerate launch) against one process. Figures go to one JSON.
#
#   scripts/gpu_check.sh [OUT.json] [TRL_WHEEL]      (default OUT: gpu_check.json in the current folder)
#
# trl, if not importable, is installed from TRL_WHEEL, $GPU_CHECK_TRL_WHEEL, or a trl-*.whl found in the
# repository root, shared/ or wheels/ (pip install --no-deps --no-index). SmolLM2 is looked for in
# $GPU_CHECK_MODEL, $RUBRIC_RL_REAL_MODEL and scripts/fetch_smollm2.py's folder; without it the check says so
# and uses tiny models. Without CUDA it prints "skipped: no CUDA device", writes {"status": "skipped", ...} and
# exits 0. Exit 1: a step failed (the JSON says which, with the end of its output).
# GPU_CHECK_CPU=1 runs the benchmark and the sharded score on the CPU with small sizes (to check this script
# without a GPU; no training).
set -u
out="${1:-gpu_check.json}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
cd "$(dirname "$0")/.." || exit 2
py="${PYTHON:-$(command -v python3 || command -v python)}"

if [ "${GPU_CHECK_CPU:-0}" = "1" ]; then
    exec "$py" scripts/gpu_check.py "$out" --cpu
fi
if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    exec "$py" scripts/gpu_check.py "$out"   # writes the skipped JSON, prints the one line, exits 0
fi

trl_note="importable"
if ! "$py" -c 'import trl' >/dev/null 2>&1 || [ -n "${2:-}" ]; then
    wheel="${2:-${GPU_CHECK_TRL_WHEEL:-}}"
    if [ -z "$wheel" ]; then
        wheel="$(ls -1 trl-*.whl shared/trl-*.whl wheels/trl-*.whl 2>/dev/null | sort | tail -n 1)"
    fi
    if [ -n "$wheel" ] && [ -f "$wheel" ]; then
        if "$py" -m pip install --quiet --no-deps --no-index "$wheel"; then
            trl_note="installed from $wheel"
        else
            trl_note="pip install --no-deps $wheel failed"
        fi
    else
        trl_note="missing (no trl wheel given or found): train and score cannot parse their arguments"
    fi
    echo "trl: $trl_note"
fi
timeout --kill-after=10 470 "$py" scripts/gpu_check.py "$out" --trl "$trl_note"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "gpu_check: stopped at 470 s; $out holds the steps finished by then" >&2
fi
exit "$rc"
