#!/usr/bin/env bash
# Re-make the README's "Projections": the Engram-at-block-1 comparison scenario (one production-
# shaped fp8 layer at block 1 of a dense 4B-class backbone on an H200) with the fetch overlapped
# (layer-ahead) and on demand, every point on 8 profiles drawn from the H200 preset's spreads
# (README: Uncertainty bands), swept
#   1. over table size (10 B to ~1 T parameters) and PCIe generation, the table in host DRAM;
#   2. over table size with the whole table in one tier on PCIe Gen5 x16: host DRAM (all-host,
#      staged), CXL memory (four Micron CZ120 modules, cxl-cz120-x8: 953.6 GiB; staged) or NVMe
#      (one Micron 9550, nvme-gen5-9550; read into host memory and staged, or nvme-direct);
#   3. over the GPUs of a two-socket node sharing its host (1 to 8), with one table copy
#      interleaved over both sockets or a copy per socket, and one or two GPUs per PCIe switch.
# The tables (median and p5-p95 over the samples, scripts/sweep_table.py) go to stdout, the figures
# to docs/img/projection-*.png. Run from the repository root (~2 min on 2 cores).
set -euo pipefail
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
mkdir -p docs/img
scenario=scenarios/compare/engram-at-block-1.yaml
sizes=model.engram.rows_per_head=1600000,16000000,64000000,160000000
for prefetch in layer-ahead on-demand; do
  common=(--quiet --workers 2 --samples 8)
  set_prefetch=(--set "strategies.prefetch=$prefetch")

  engramsim sweep "$scenario" --out "$out/links-$prefetch" "${common[@]}" "${set_prefetch[@]}" \
    --grid hardware.link=pcie-gen3-x16,pcie-gen4-x16,pcie-gen5-x16,pcie-gen6-x16 --grid "$sizes" > /dev/null
  engramsim plot "$out/links-$prefetch" --x model.engram.rows_per_head --y overhead_pct --hue hardware.link \
    --out "docs/img/projection-$prefetch.png" > /dev/null
  python scripts/sweep_table.py "$out/links-$prefetch/sweep.csv" --rows model.engram.rows_per_head --cols hardware.link \
    --sizes --title "$prefetch, host DRAM"

  # One zipped axis of four tier set-ups: `name` labels them, `strategies` says where the table sits
  # and how it moves (a zip's values must differ, so each set-up is one whole mapping).
  s="cache: none, prefetch: $prefetch"
  engramsim sweep "$scenario" --out "$out/tiers-$prefetch" "${common[@]}" \
    --set "hardware={profile: h200, link: pcie-gen5-x16, cxl: cxl-cz120-x8, nvme: nvme-gen5-9550}" --grid "$sizes" \
    --zip name=host-dram,cxl,nvme-staged,nvme-direct \
    --zip "strategies={placement: all-host, $s, transport: staged},{placement: {name: tiered, params: {tiers: [cxl]}}, $s, transport: staged},{placement: {name: tiered, params: {tiers: [nvme]}}, $s, transport: staged},{placement: {name: tiered, params: {tiers: [nvme]}}, $s, transport: nvme-direct}" \
    > /dev/null
  engramsim plot "$out/tiers-$prefetch" --x model.engram.rows_per_head --y overhead_pct --hue name \
    --out "docs/img/projection-tiers-$prefetch.png" > /dev/null
  python scripts/sweep_table.py "$out/tiers-$prefetch/sweep.csv" --rows model.engram.rows_per_head --cols name \
    --sizes --title "$prefetch, pcie-gen5-x16, by tier"

  engramsim sweep "$scenario" --out "$out/node-$prefetch" "${common[@]}" "${set_prefetch[@]}" --set hardware.node.numa_nodes=2 \
    --grid hardware.node.table_copies=per-node,per-numa --grid hardware.node.gpus_per_switch=1,2 \
    --grid hardware.node.gpus=1,2,4,8 > /dev/null
  engramsim plot "$out/node-$prefetch" --x hardware.node.gpus --y overhead_pct \
    --hue hardware.node.table_copies,hardware.node.gpus_per_switch --out "docs/img/projection-node-$prefetch.png" > /dev/null
  python scripts/sweep_table.py "$out/node-$prefetch/sweep.csv" --rows hardware.node.gpus \
    --cols hardware.node.table_copies,hardware.node.gpus_per_switch --title "$prefetch, a two-socket node"
done
