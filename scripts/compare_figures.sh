#!/usr/bin/env bash
# Re-make the README's comparison figures (docs/img/compare-*.png) from the shipped comparison
# scenarios (scenarios/compare/), simulated; run from the repository root (~1 min on 2 cores).
set -euo pipefail
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run() {  # NAME SCENARIO ARGS...
  local name=$1 scenario=$2
  shift 2
  engramsim compare "scenarios/compare/$scenario" --out "$out/$name" --quiet "$@"
  cp "$out/$name/compare.png" "docs/img/compare-$name.png"
}
mkdir -p docs/img
run production production-h200.yaml --vary strategies.transport=staged,staged-batched,zero-copy,zero-copy-sm \
  --vary 'strategies.cache=none,{name: lru, params: {rows: 4000000}}' --vary strategies.prefetch=layer-ahead,on-demand
run nvme nvme-beyond-dram.yaml --vary strategies.transport=staged,nvme-direct \
  --vary 'strategies.cache=none,{name: lru, params: {rows: 4000000}}' \
  --vary 'hardware.nvme={preset: nvme-gen5-9550, drives: 1},{preset: nvme-gen5-9550, drives: 4}'
run small-batch small-batch-decode.yaml --vary workload.batching.max_num_seqs=1,2,4,8 \
  --vary strategies.transport=staged,zero-copy,row-copy --vary strategies.prefetch=layer-ahead,on-demand
run block-1 engram-at-block-1.yaml --vary strategies.transport=zero-copy,row-copy \
  --vary strategies.prefetch=layer-ahead,prefill-ahead,lookahead,speculative-decode --set hardware.link=pcie-gen4-x16
ls -l docs/img
