"""Re-make the tables and figures of README.md's "Comparing policies" section (its subsections
"`engramsim compare`", "Prefetch policies", "Deadline mode" and "The shipped comparisons"), simulated.

    python scripts/compare_readme.py      # from the repository root; ~1 min on 2 cores

Runs every `engramsim compare` command those subsections show, one after another, and prints each
table as markdown in README order, under a line naming the README table it replaces: the two shown
as the terminal's table print the command's own output, the others are formatted from compare.json.
The two tables of "Prefetch policies" that are not compare output (stall split by step kind,
predictor quality) come from `runner.simulate_run` and a compare run with `--keep-runs`. Copies four
comparisons' compare.png to docs/img/compare-<name>.png (the README's "Figures").
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engramsim.runner import simulate_run
from engramsim.scenario_io import load_scenario
from engramsim.session import prepare

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30

QUICKSTART_E = (  # "Prefetch policies": the quickstart with a one-block window on PCIe Gen3
    "--set", "hardware={profile: h100-sxm, link: pcie-gen3-x16}",
    "--set", "model.backbone={layers: 16, hidden: 1024, intermediate: 2816, attention: {heads: 16, kv_heads: 4, head_dim: 64}, vocab: 32000}",
    "--set", "workload.batching.max_num_batched_tokens=2048",
)
CACHES = "strategies.cache=none,{name: lru, params: {rows: 4000000}}"


@dataclass(frozen=True)
class Comparison:
    """One `engramsim compare` command as README shows it (`args` less `--out`), printed as `form`."""

    title: str  # the README table it replaces
    readme_out: str  # its `--out` in README (the terminal output names it)
    scenario: str
    args: tuple[str, ...]
    form: str  # "terminal", "deadline" or "shipped"
    figure: str | None = None  # docs/img/compare-<figure>.png


PREFETCH_E = Comparison(
    "Prefetch policies: the quickstart, five prefetches (terminal table)", "/tmp/cmpE", "scenarios/quickstart.yaml",
    ("--vary", "strategies.prefetch=on-demand,layer-ahead,prefill-ahead,lookahead,speculative-decode", *QUICKSTART_E), "terminal")
COMPARISONS = [
    Comparison("`engramsim compare`: the quickstart, two transports x two prefetches (terminal table)", "/tmp/cmp", "scenarios/quickstart.yaml",
               ("--vary", "strategies.transport=staged,zero-copy", "--vary", "strategies.prefetch=on-demand,layer-ahead"), "terminal"),
    Comparison("`engramsim compare`: the quickstart with caches (terminal table)", "/tmp/cmp2", "scenarios/quickstart.yaml",
               ("--vary", "strategies.cache=none,{name: lru, params: {rows: 100000}},{name: lfu, params: {rows: 100000}},"
                          "{name: lru, params: {rows: 600000000}}",
                "--vary", "strategies.prefetch=on-demand,layer-ahead"), "terminal"),
    PREFETCH_E,
    Comparison("Prefetch policies: engram-at-block-1 on Gen4 (terminal table)", "/tmp/cmpE-b1", "scenarios/compare/engram-at-block-1.yaml",
               ("--vary", "strategies.transport=zero-copy,row-copy",
                "--vary", "strategies.prefetch=layer-ahead,prefill-ahead,lookahead,speculative-decode",
                "--set", "hardware.link=pcie-gen4-x16"), "terminal", figure="block-1"),
    Comparison("Deadline mode", "runs/cmp-deadline", "scenarios/compare/engram-at-block-1.yaml",
               ("--vary", "strategies.prefetch=layer-ahead,deadline", "--vary", "hardware.link=pcie-gen3-x16,pcie-gen4-x16,pcie-gen5-x16",
                "--vary", "strategies.transport=staged,zero-copy"), "deadline"),
    Comparison("The shipped comparisons: a production-shaped table", "runs/cmp-production", "scenarios/compare/production-h200.yaml",
               ("--vary", "strategies.transport=staged,staged-batched,zero-copy,zero-copy-sm",
                "--vary", CACHES, "--vary", "strategies.prefetch=layer-ahead,on-demand"), "shipped", figure="production"),
    Comparison("The shipped comparisons: a table larger than host DRAM (NVMe)", "runs/cmp-nvme", "scenarios/compare/nvme-beyond-dram.yaml",
               ("--vary", "strategies.transport=staged,nvme-direct", "--vary", CACHES,
                "--vary", "hardware.nvme={preset: nvme-gen5-9550, drives: 1},{preset: nvme-gen5-9550, drives: 4}"), "shipped", figure="nvme"),
    Comparison("The shipped comparisons: the same table with a CXL tier", "runs/cmp-cxl", "scenarios/compare/nvme-beyond-dram.yaml",
               ("--set", "hardware.cxl=cxl-cz120-x8",
                "--vary", "strategies.placement={name: tiered, params: {tiers: [host, nvme], host_gib: 768}},"
                          "{name: tiered, params: {tiers: [host, cxl, nvme], host_gib: 768}}",
                "--vary", "strategies.transport=staged,zero-copy,nvme-direct"), "shipped"),
    Comparison("The shipped comparisons: small-batch decode", "runs/cmp-small-batch", "scenarios/compare/small-batch-decode.yaml",
               ("--vary", "workload.batching.max_num_seqs=1,2,4,8", "--vary", "strategies.transport=staged,zero-copy,row-copy",
                "--vary", "strategies.prefetch=layer-ahead,on-demand"), "shipped", figure="small-batch"),
    Comparison("The shipped comparisons: an Engram layer at block 1", "runs/cmp-block-1", "scenarios/compare/engram-at-block-1.yaml",
               ("--vary", "strategies.prefetch=layer-ahead,on-demand", "--vary", "strategies.transport=staged,zero-copy,row-copy",
                "--vary", "hardware.link=pcie-gen4-x16,pcie-gen5-x16"), "shipped"),
]
SPECULATIVE = [  # "Predictor quality": (the params' label, the prefetch value)
    ("`k: 1`", "{name: speculative-decode, params: {k: 1}}"),
    ("defaults (`k: 4`)", "speculative-decode"),
    ("`k: 16, budget_rows: 16384`", "{name: speculative-decode, params: {k: 16, budget_rows: 16384}}"),
    ("`train_trace: english-prose`", "{name: speculative-decode, params: {train_trace: english-prose}}"),
    ("`train_trace: cpython-stdlib`", "{name: speculative-decode, params: {train_trace: cpython-stdlib}}"),
]


def compare(scenario: str, args: tuple[str, ...], out: Path) -> None:
    """Run `engramsim compare --quiet`."""
    subprocess.run(["engramsim", "compare", scenario, *args, "--out", str(out), "--quiet"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)


def compare_on_terminal(scenario: str, args: tuple[str, ...], out: Path) -> str:
    """Run `engramsim compare` as a wide terminal would show it (COLUMNS widens its table): its output."""
    env = os.environ | {"COLUMNS": "400", "TERM": "dumb"}  # dumb: no colour
    done = subprocess.run(["engramsim", "compare", scenario, *args, "--out", str(out)], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                          check=True, capture_output=True, text=True)
    return "\n".join(line.rstrip() for line in done.stdout.splitlines() if line.strip())


def markdown(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    lines = ["| " + " | ".join(cells) + " |" for cells in [header, *rows]]
    return "\n".join([lines[0], "|" + "|".join(align or ["---"] * len(header)) + "|", *lines[1:]])


def variants(out: Path) -> list[tuple[dict, list[str]]]:
    """compare.json's variants, each with its varied values as given (compare.csv's text)."""
    doc = json.loads((out / "compare.json").read_text())
    keys = [v["key"] for v in doc["vary"]]
    with (out / "compare.csv").open(newline="") as f:
        given = [[row[k] for k in keys] for row in csv.DictReader(f)]
    return list(zip(doc["variants"], given, strict=True))


def short(out: Path) -> list[str]:
    """The varied keys' last parts: the tables' first headers."""
    return [v["key"].rsplit(".", 1)[-1] for v in json.loads((out / "compare.json").read_text())["vary"]]


def hbm_gib(variant: dict) -> float:
    return sum(variant["hbm"]["items_bytes"].values()) / GIB


def shipped_table(out: Path) -> str:
    """`| # | <varied keys> | tok/s | ... | HBM used GiB |`: the shipped comparisons' tables."""
    header = ["#", *short(out), "tok/s", "vs all-HBM %", "vs no Engram %", "TPOT p50 ms", "TPOT p99 ms",
              "stall ms", "link MB", "hit rate %", "HBM used GiB"]
    rows = []
    for v, given in variants(out):
        values = [f"`{value}`" for value in given]
        s = v["summary"]
        if v["status"] != "ok":
            cells = [f"{v['status']}: {v['reason']}"] + [""] * 8
        else:
            cells = [f"{s['throughput_tok_s']:,.0f}", f"{s['overhead_pct']:.2f}", f"{s['overhead_vs_no_engram_pct']:.2f}",
                     f"{s['tpot_ms_p50']:.3f}", f"{s['tpot_ms_p99']:.3f}", f"{s['engram_stall_ms_total']:,.1f}",
                     f"{s['pcie_bytes'] / 1e6:.1f}", f"{100 * s['cache_hit_rate']:.1f}", f"{hbm_gib(v):.2f}"]
        rows.append([str(v["index"]), *values, *cells])
    return markdown(header, rows)


def deadline_table(out: Path) -> str:
    """Deadline mode's table: the varied values, then throughput, latency, stall and lookups dropped."""
    header = short(out) + ["throughput tok/s", "vs all-HBM %", "TPOT p50 ms", "TPOT p99 ms", "stall ms",
                                                     "lookups dropped %"]
    rows = []
    for v, given in variants(out):
        s = v["summary"]
        rows.append(given + [
            f"{s['throughput_tok_s']:,.2f}", f"{s['overhead_pct']:.3f}", f"{s['tpot_ms_p50']:.3f}", f"{s['tpot_ms_p99']:.3f}",
            f"{s['engram_stall_ms_total']:,.3f}", f"{s['lookups_dropped_pct']:.3f}"])
    return markdown(header, rows, ["---"] * (len(header) - 6) + ["---:"] * 6)


def stall_split_table() -> str:
    """Stall split by step kind: PREFETCH_E's scenario, one `simulate_run` per prefetch."""
    rows = []
    for prefetch in ("on-demand", "layer-ahead", "prefill-ahead", "lookahead", "speculative-decode"):
        overrides = [*QUICKSTART_E[1::2], f"strategies.prefetch={prefetch}"]
        outcome = simulate_run(prepare(load_scenario(ROOT / PREFETCH_E.scenario, overrides), PREFETCH_E.scenario))
        cells, ahead, counts = [], [], {}
        for kind in ("prefill", "decode"):
            steps = [s for s in outcome.steps if s.kind == kind]
            counts[kind] = len(steps)
            stalled = [s.index for s in steps if s.stall_s > 0]
            only = f" (step {stalled[0]} only)" if len(stalled) == 1 else ""
            cells.append(f"{1e3 * sum(s.stall_s for s in steps):.3f}{only}")
            early = sum(1 for s in steps if any(r.issue_step < s.index for r in s.layers))
            if early:
                ahead.append(f"{early} {kind}s")
        rows.append([prefetch, *cells, " + ".join(ahead) or "0"])
    header = ["prefetch", f"prefill stall ({counts['prefill']} steps)", f"decode stall ({counts['decode']} steps)", "steps fetched ahead"]
    return markdown(header, rows)


def predictor_table(tmp: Path) -> str:
    """Predictor quality: PREFETCH_E's scenario with `--vary` over the speculative params."""
    out = tmp / "predictor"
    prefetch = ",".join(value for _, value in SPECULATIVE)
    compare(PREFETCH_E.scenario, ("--vary", f"strategies.prefetch={prefetch}", *QUICKSTART_E, "--keep-runs"), out)
    doc = json.loads((out / "compare.json").read_text())
    rows = []
    for (label, _), v in zip(SPECULATIVE, doc["variants"], strict=True):
        s = v["summary"]
        source = json.loads((out / v["run_dir"] / "results.json").read_text())["sources"]["prefetch"]
        trained = f"{source['trace']}, {'less the served windows' if source['served_trace'] else 'whole'} ({source['tokens']:,} tokens)"
        rows.append([label, trained, f"{s['rows_speculative']:,}", f"{s['rows_staged']:,}", f"{s['speculative_precision']:.3f}",
                     f"{s['speculative_recall']:.3f}", f"{s['speculative_wasted_bytes'] / 1e6:.1f}", f"{s['pcie_bytes'] / 1e6:.2f}",
                     f"{s['engram_stall_ms_total']:.2f}"])
    header = ["speculative-decode params", "trained on", "speculative rows", "rows staged", "precision", "recall", "wasted MB",
              "link MB", "stall ms"]
    return markdown(header, rows)


def main() -> None:
    (ROOT / "docs/img").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for c in COMPARISONS:
            out = Path(tmp) / c.readme_out.replace("/", "_")
            print(f"## README table: {c.title}\n")
            if c.form == "terminal":
                print("```\n" + compare_on_terminal(c.scenario, c.args, out).replace(str(out), c.readme_out) + "\n```\n")
            else:
                compare(c.scenario, c.args, out)
                print((deadline_table(out) if c.form == "deadline" else shipped_table(out)) + "\n")
            if c is PREFETCH_E:
                print("## README table: Prefetch policies: stall split by step kind\n\n" + stall_split_table() + "\n")
                print("## README table: Prefetch policies: predictor quality\n\n" + predictor_table(Path(tmp)) + "\n")
            if c.figure:
                shutil.copyfile(out / "compare.png", ROOT / f"docs/img/compare-{c.figure}.png")


if __name__ == "__main__":
    main()
