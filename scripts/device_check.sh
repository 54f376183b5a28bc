#!/usr/bin/env bash
# Device check on a CUDA machine (written for one H200 lent for 15 minutes in all), one call of
# under DEADLINE_S seconds (default 500), every result written under $OUT as soon as it exists:
#   0. install the wheels of scripts/device_wheels.txt (from .whl/, made by
#      scripts/fetch_device_wheels.sh: the device machine reaches no registry) and engramsim, over
#      the machine's own python and torch (torch is never reinstalled);
#   1. smoke (60 s, stops the check on failure): /proc/meminfo, 1 GiB page-locked, zero-copy
#      read-back, one 64 MiB copy timed, NVML read          -> smoke.json
#   2. `engramsim hw --json`                                 -> hw.json
#   3. the CUDA tests (pytest -m cuda)
#   4. scenarios/paper-table4-4b.yaml for real, staged then zero-copy, shrunk to fit the time
#      (64 requests, outputs up to 256 tokens, 4M rows per head = a 10 GB table)
#                                                            -> paper4b-staged.json, paper4b-zero-copy.json
#      (simulate the same on the calibrated profile afterwards, on any machine, and `engramsim diff`)
#   5. a quick CUDA calibration                              -> h200.yaml, h200-samples.json
#   6. validation of a subset of scenarios/validation/ on h200.yaml, in bf16, --repeats 1,
#      rewritten after each scenario                         -> validate.json
# Each step's time limit is cut to what is left before the deadline; a step with under 15 s left
# is skipped and says so. All output goes to $OUT/device_check.log: eight files at most come back.
#
# Usage, from the repository root:  OUT=/some/folder bash scripts/device_check.sh
# Dry run of the plumbing on a machine without a GPU:  BACKEND=cpu SKIP_WHEELS=1 OUT=/tmp/dc bash scripts/device_check.sh
# (the CPU backend everywhere, the tiny calibration budget, a much smaller paper-shaped run, one
# validation scenario). PYTHON picks the interpreter (default python3, the one holding CUDA torch);
# ONLY="paper calibrate" runs only those groups (smoke hw tests paper calibrate validate);
# PAPER_REQUESTS, PAPER_ROWS and PAPER_LIMIT resize the paper-shaped runs; PROFILE=FILE validates
# on a profile calibrated earlier when this call does not calibrate.
# SKIP_WHEELS=1 skips the wheels (this python has those packages); SKIP_INSTALL=1 also uses an
# engramsim already importable by it.
#
# Exit status: the number of steps that failed or were skipped (0 = all ran and passed).

set -uo pipefail

OUT=${OUT:-$PWD/device-out}
PY=${PYTHON:-python3}
BACKEND=${BACKEND:-cuda}
DEADLINE_S=${DEADLINE_S:-500}
mkdir -p "$OUT"
LOG=$OUT/device_check.log
: >"$LOG"
export PYTHONUNBUFFERED=1 COLUMNS=200  # rich tables in the log at full width
export ENGRAMSIM_CACHE=${ENGRAMSIM_CACHE:-/tmp/engramsim-cache}
FAILED=0
T0=$(date +%s)

if [ "$BACKEND" = cuda ]; then
  BUDGET=quick
  PAPER=(--set "workload.requests=${PAPER_REQUESTS:-64}" --set workload.output_len.high=256
         --set "model.engram.rows_per_head=${PAPER_ROWS:-4000000}")
  VALIDATE=(scenarios/validation/v01-base.yaml scenarios/validation/v07-on-demand.yaml scenarios/validation/v08-zero-copy.yaml
            scenarios/validation/v11-moe.yaml scenarios/validation/v13-mhc-mla.yaml)
  DTYPE=(--set model.backbone.dtype=bf16 --set model.engram.dtype=bf16)
else
  BUDGET=tiny
  PAPER=(--set workload.requests=3 --set "workload.prompt_len={dist: uniform, low: 32, high: 128}"
         --set "workload.output_len={dist: uniform, low: 2, high: 6}"
         --set model.engram.rows_per_head=100000 --set model.backbone.layers=2 --set model.backbone.hidden=256
         --set model.backbone.intermediate=512 --set model.backbone.vocab=4096
         --set "model.backbone.attention={heads: 4, kv_heads: 2, head_dim: 64}")
  VALIDATE=(scenarios/validation/v01-base.yaml)
  DTYPE=()
fi

say() { echo "== [$(($(date +%s) - T0)) s] $*" | tee -a "$LOG"; }

# wanted GROUP: is GROUP (smoke hw tests paper calibrate validate) among $ONLY (default: all)?
wanted() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

# step NAME LIMIT CMD...: CMD under min(LIMIT, time left), its output in the log; count failures.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE_S - ($(date +%s) - T0)))
  if [ "$left" -lt 15 ]; then
    FAILED=$((FAILED + 1))
    say "SKIPPED $name: ${left} s left before the ${DEADLINE_S} s deadline"
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "start $name (limit $limit s): $*"
  timeout --kill-after=5 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    FAILED=$((FAILED + 1))
    say "FAILED $name (exit $rc$([ "$rc" -eq 124 ] && echo ': time limit'))"
    return 1
  fi
  say "done $name"
}

# ---- 0. install -----------------------------------------------------------------------------------
say "python: $($PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available(), "grouped_mm", hasattr(torch.nn.functional, "grouped_mm"))' 2>&1)"
if [ -n "${SKIP_INSTALL:-}" ]; then
  say "install skipped (SKIP_INSTALL)"
else
  if [ -n "${SKIP_WHEELS:-}" ]; then
    say "wheels skipped (SKIP_WHEELS): this python already has them"
  else
    expected=$(grep -cv '^\s*\(#\|$\)' scripts/device_wheels.txt)
    found=$(compgen -G ".whl/*.whl" | wc -l)
    if [ "$found" -ne "$expected" ]; then
      say "FAILED install: .whl/ holds $found wheels, scripts/device_wheels.txt lists $expected (run scripts/fetch_device_wheels.sh here first)"
      exit 99
    fi
    step "wheels" 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || exit 99
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  step "install" 60 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target /tmp/engramsim . || exit 99
  export PYTHONPATH=/tmp/engramsim${PYTHONPATH:+:$PYTHONPATH}
  # the checkout's engramsim/ holds only part of the package (setuptools maps the rest in): keep
  # the current folder off sys.path so the installed package is the one imported
  export PYTHONSAFEPATH=1
fi
ES=("$PY" -m engramsim)

# ---- 1. smoke ---------------------------------------------------------------------------------------
if wanted smoke; then
  step "smoke" 60 "$PY" scripts/device_smoke.py "$OUT/smoke.json" --backend "$BACKEND" || { say "smoke failed: stopping"; exit 98; }
fi
if [ "$BACKEND" = cuda ] && [ -z "${ENGRAMSIM_HOST_MEMORY_GIB:-}" ]; then
  export ENGRAMSIM_HOST_MEMORY_GIB=100  # the VM's memory grows as it is used: KINDS.md gives 128 GiB
  say "MemAvailable $(grep MemAvailable /proc/meminfo); runs are sized against ENGRAMSIM_HOST_MEMORY_GIB=$ENGRAMSIM_HOST_MEMORY_GIB"
fi

# ---- 2. hardware ------------------------------------------------------------------------------------
wanted hw && say "start hw" && if timeout 30 "${ES[@]}" hw --json >"$OUT/hw.json" 2>>"$LOG"; then say "done hw"; else FAILED=$((FAILED + 1)); say "FAILED hw"; fi

# ---- 3. CUDA tests ----------------------------------------------------------------------------------
# the checkout last on the path: `tests` (a namespace package) importable, engramsim still the installed one
wanted tests && step "pytest -m cuda" 100 env PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" "$PY" -m pytest -q -m cuda -p no:cacheprovider -p no:benchmark tests/test_cuda_backend.py \
  tests/test_calibrate.py tests/test_engram_module.py tests/test_hashing.py tests/test_validate.py

# ---- 4. the paper's Table 4 (4B), shrunk ------------------------------------------------------------
for transport in staged zero-copy; do
  wanted paper || break
  step "paper-table4-4b $transport" "${PAPER_LIMIT:-75}" "${ES[@]}" run scenarios/paper-table4-4b.yaml --backend "$BACKEND" "${PAPER[@]}" \
    --set "strategies.transport=$transport" --out "/tmp/paper4b-$transport" --force --yes \
    && cp "/tmp/paper4b-$transport/results.json" "$OUT/paper4b-$transport.json"
done

# ---- 5. calibration ---------------------------------------------------------------------------------
wanted calibrate && step "calibrate" 170 "${ES[@]}" calibrate --backend "$BACKEND" --budget "$BUDGET" --out "$OUT/h200.yaml" --samples "$OUT/h200-samples.json"

# ---- 6. validation ----------------------------------------------------------------------------------
if [ -n "${PROFILE:-}" ] && [ ! -f "$OUT/h200.yaml" ]; then
  cp "$PROFILE" "$OUT/h200.yaml"  # validate on a profile calibrated earlier (e.g. ONLY=validate)
fi
if ! wanted validate; then
  :
elif [ -f "$OUT/h200.yaml" ]; then
  step "validate" 150 "${ES[@]}" validate "${VALIDATE[@]}" --backend "$BACKEND" --repeats 1 --profile "$OUT/h200.yaml" \
    ${DTYPE[@]+"${DTYPE[@]}"} --json "$OUT/validate.json" --quiet
else
  FAILED=$((FAILED + 1))
  say "SKIPPED validate: no calibrated profile"
fi

say "finished: $FAILED step(s) failed or skipped; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$FAILED"
