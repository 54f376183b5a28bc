#!/usr/bin/env bash
# Re-make the README's "Projections": the Engram-at-block-1 comparison scenario (one production-
# shaped fp8 layer at block 1 of a dense 4B-class backbone on an H200) swept over table size
# (10 B to 1 T parameters) and PCIe generation, with the fetch overlapped (layer-ahead) and on
# demand, each point on 8 profiles drawn from the H200 preset's spreads (README: Uncertainty
# bands); the tables (median and p5-p95 over the samples) go to stdout, the figures to
# docs/img/projection-*.png. Run from the repository root (~1 min on 2 cores).
set -euo pipefail
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
mkdir -p docs/img
for prefetch in layer-ahead on-demand; do
  engramsim sweep scenarios/compare/engram-at-block-1.yaml --out "$out/$prefetch" --quiet --workers 2 \
    --set "strategies.prefetch=$prefetch" --samples 8 \
    --grid hardware.link=pcie-gen3-x16,pcie-gen4-x16,pcie-gen5-x16,pcie-gen6-x16 \
    --grid model.engram.rows_per_head=1600000,16000000,64000000,160000000 > /dev/null
  engramsim plot "$out/$prefetch" --x model.engram.rows_per_head --y overhead_pct --hue hardware.link \
    --out "docs/img/projection-$prefetch.png" > /dev/null
  python - "$out/$prefetch/sweep.csv" "$prefetch" <<'PY'
import csv, sys
import numpy as np
rows = list(csv.DictReader(open(sys.argv[1])))
links = list(dict.fromkeys(r["hardware.link"] for r in rows))
sizes = list(dict.fromkeys(r["model.engram.rows_per_head"] for r in rows))
def cell(link, size):
    values = [float(r["overhead_pct"]) for r in rows if r["hardware.link"] == link and r["model.engram.rows_per_head"] == size]
    p5, p50, p95 = np.percentile(values, [5, 50, 95])
    p5, p50, p95 = (round(v, 2) + 0.0 for v in (p5, p50, p95))  # no "-0.00"
    return f"{p50:.2f} ({p5:.2f}-{p95:.2f})"
print(f"\n{sys.argv[2]}: overhead vs all-HBM %, median (p5-p95) over {len(rows) // (len(links) * len(sizes))} samples\n")
print("| rows per head (params per layer) | " + " | ".join(links) + " |")
print("|---|" + "---|" * len(links))
for size in sizes:
    params = int(size) * 24 * 256 / 1e9  # 24 heads of 256-value rows
    print(f"| {int(size):,} ({params:,.0f} B) | " + " | ".join(cell(link, size) for link in links) + " |")
PY
done
