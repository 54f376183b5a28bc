"""`engramsim sweep`: a grid of points of one scenario, each run as `engramsim run` runs it; one
results file per point and one table of them all.

The points are the cartesian product of the `--grid` lists, the `--zip` lists advancing together
as one more axis (the last, varying fastest). Values are parsed and applied as `engramsim compare
--vary` parses and applies them (engramsim/variants.py): YAML, as `--set` overrides after the common
`--set`s. Every point is resolved before any runs: a key that is not a scenario field, or a problem
of the scenario or a `--set` itself, is one `InputError` line; a value the schema refuses is that
point's error, listed in the table, and the others run.

A point's file is `points/<id>.json`, results.json's document for its scenario, the id the first
16 hex digits of the sha256 of the resolved scenario's canonical JSON: the same point gives the
same bytes whatever the executor (engramsim/pool.py) or the worker count, since a seed is in every
scenario. `sweep.json` records the sweep's definition (the scenario's path and the sha256 of its
text, the grid, the zip, the sets), written before the first point runs; running the same command
again skips every point whose file is complete and runs the rest (a point that failed is tried
again), so a sweep killed mid-way loses at most the points in flight. A folder that holds another
sweep, or other files, is refused and left alone. `sweep.csv` and `sweep.parquet` (the grid keys'
values, each point's id, status and one-line error, and its summary metrics in the registry's
order) are written, atomically, once every point has run; they hold no wall-clock values.

With `--samples N` every combination is N points, sample 1..N, each run on the profile drawn from
its spreads (engramsim/uncertainty.py, seeded by run.seed and the sample's index): its id hashes the
scenario and the index, its file records what was drawn (`sample`), and the table's `sample` column
tells them apart, so `engramsim plot` draws the samples sharing an x and a hue as their p5-p95 band.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engramsim import __version__
from engramsim.errors import InputError
from engramsim.files import atomic_path, check_output, write_text_atomic
from engramsim.metrics import registered
from engramsim.pool import Done, Task
from engramsim.scenario import Scenario
from engramsim.scenario_io import dump_scenario
from engramsim.session import Workloads
from engramsim.variants import Variant, Vary, check_key_paths, check_keys, load_variant, parse_vary, value_problem, variants

SCHEMA_VERSION = 1
MAX_POINTS = 100_000
DEFINITION = "sweep.json"
POINTS = "points"
CSV, PARQUET = "sweep.csv", "sweep.parquet"
OK, ERROR = "ok", "error"
BASE = ("run.backend=sim",)  # every point is simulated


@dataclass(frozen=True)
class Definition:
    """What makes a sweep: its scenario (path as given, sha256 of its text), grid, zip and sets."""

    source: str
    scenario_sha256: str
    grid: tuple[Vary, ...]
    zipped: tuple[Vary, ...]
    sets: tuple[str, ...]
    samples: int = 0

    @property
    def keys(self) -> list[str]:
        return [v.key for v in (*self.grid, *self.zipped)]

    def identity(self) -> dict[str, Any]:
        """The parts two runs of one sweep share (the path may be spelt otherwise)."""
        return {"scenario_sha256": self.scenario_sha256, "grid": [_axis(v) for v in self.grid],
                "zip": [_axis(v) for v in self.zipped], "set": list(self.sets)} | ({"samples": self.samples} if self.samples else {})

    def document(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "engramsim_version": __version__, "scenario": self.source, **self.identity()}


def _axis(vary: Vary) -> dict[str, Any]:
    return {"key": vary.key, "values": list(vary.texts)}


def parse_definition(source: str | Path, grids: Sequence[str], zips: Sequence[str], sets: Sequence[str],
                     samples: int = 0) -> Definition:
    """The `--grid`, `--zip`, `--set` and `--samples` options: keys checked against the scenario
    schema, no key twice, zips of one length, at most `MAX_POINTS` points; one `InputError` line otherwise."""
    if not grids and not zips:
        raise InputError("--grid", "nothing to sweep; give at least one --grid KEY.PATH=V1,V2,... (or --zip)")
    grid = tuple(parse_vary(item, "--grid") for item in grids)
    zipped = tuple(parse_vary(item, "--zip") for item in zips)
    for vary in zipped[1:]:
        if len(vary.values) != len(zipped[0].values):
            raise InputError("--zip", f"has {len(vary.values)} values and --zip {zipped[0].key} has {len(zipped[0].values)}; "
                             "zipped lists advance together, so give each the same number", field=vary.key)
    check_keys([*grid, *zipped], sets, "a sweep simulates every point; the backend cannot vary")
    check_key_paths([*grid, *zipped])
    if samples < 0:
        raise InputError("--samples", f"expected a number of samples, 0 or more, got {samples}")
    count = max(samples, 1)
    for n in [len(v.values) for v in grid] + ([len(zipped[0].values)] if zipped else []):
        count *= n
    if count > MAX_POINTS:
        raise InputError("--grid", f"{count:,} points; at most {MAX_POINTS:,} (sweep fewer keys or values)")
    return Definition(str(source), "", grid, zipped, tuple(sets), samples)


@dataclass(frozen=True)
class Point:
    """One combination of the values: its scenario and id, or why its values do not make a scenario."""

    variant: Variant
    scenario: Scenario | None
    id: str | None
    error: str | None = None
    sample: int = 0  # 0: the profile as it is; 1..: drawn from its spreads

    @property
    def label(self) -> str:
        return label(self.variant) + (f", sample {self.sample}" if self.sample else "")


def label(variant: Variant) -> str:
    """A point's values, full key paths: 'hardware.link=pcie-gen4-x16, model.engram.rows_per_head=1000'."""
    return ", ".join(f"{key}={text}" for key, text, _ in variant.overrides)


def point_id(scenario: Scenario, sample: int = 0) -> str:
    """The first 16 hex digits of the sha256 of the resolved scenario's canonical JSON (and ' sample N' after it for a sample)."""
    text = json.dumps(dump_scenario(scenario), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256((text + (f" sample {sample}" if sample else "")).encode()).hexdigest()[:16]


def resolve(definition: Definition) -> tuple[Definition, list[Point]]:
    """Every point's scenario (the definition now with its scenario's sha256): an error the point's
    values cause is the point's; any other error of the scenario or the sets is raised."""
    base = [*BASE, *definition.sets]
    samples = range(1, definition.samples + 1) if definition.samples else [0]
    points = []
    for variant in variants(definition.grid, definition.zipped):
        got = load_variant(definition.source, base, variant)
        if isinstance(got, InputError):
            problem = f"{got.field}: {value_problem(got)}" if got.field else value_problem(got)
            points += [Point(variant, None, None, f"{problem} (at {label(variant)})", sample) for sample in samples]
            continue
        if got.run.backend != "sim":
            raise InputError("--set", "a sweep simulates every point; leave run.backend out", field="run.backend")
        points += [Point(variant, got, point_id(got, sample), sample=sample) for sample in samples]
    digest = hashlib.sha256(Path(definition.source).read_bytes()).hexdigest()
    return Definition(definition.source, digest, definition.grid, definition.zipped, definition.sets, definition.samples), points


# ---- the folder ----------------------------------------------------------------------------------
def check_folder(out: Path, definition: Definition) -> bool:
    """Whether `out` holds this sweep already (True: resume), is new or empty (False); another
    sweep's folder, a folder of other files, or a path that is not a folder is refused, untouched."""
    if not os.path.lexists(out):
        check_output(out, folder=True, inputs=[definition.source])
        return False
    if out.is_symlink() or not out.is_dir():
        raise InputError(out, "exists and is not a folder; expected a sweep folder (new, empty, or this sweep's)")
    marker = out / DEFINITION
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8"))
            theirs = {key: recorded[key] for key in ("scenario_sha256", "grid", "zip", "set")}
            theirs |= {"samples": recorded["samples"]} if "samples" in recorded else {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(marker, f"is not a sweep definition ({type(exc).__name__}); choose another --out") from None
        ours = definition.identity()
        if theirs != ours:
            differ = ", ".join(what for key, what in (("scenario_sha256", f"the scenario's text ({recorded.get('scenario')})"),
                                                      ("grid", "--grid"), ("zip", "--zip"), ("set", "--set"), ("samples", "--samples"))
                               if theirs.get(key) != ours.get(key))
            raise InputError(out, f"holds another sweep (its {DEFINITION} differs in {differ}); choose another --out, "
                             "or rerun that sweep's command to resume it")
        if not os.access(out, os.W_OK | os.X_OK):
            raise InputError(out, "is not writable")
        return True
    if any(out.iterdir()):
        raise InputError(out, f"exists and holds no {DEFINITION}; choose a new or empty folder, or an earlier sweep's")
    check_output(out / DEFINITION)
    return False


def point_path(out: Path, id: str, suffix: str = ".json") -> Path:
    return out / POINTS / f"{id}{suffix}"


def read_point(out: Path, point: Point, plots: bool) -> dict[str, Any] | None:
    """The summary of a point's file when the file is complete (its scenario is the point's, and
    its plot is there when `plots`), else None: the point runs."""
    assert point.id is not None and point.scenario is not None
    try:
        document = json.loads(point_path(out, point.id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or not isinstance(document.get("summary"), dict):
        return None
    if (document.get("sample") or {}).get("index", 0) != point.sample:
        return None
    if document.get("scenario") != dump_scenario(point.scenario) or (plots and not point_path(out, point.id, ".png").is_file()):
        return None
    return document["summary"]


# ---- running ---------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What a sweep did: its points, each id's summary or error, and how many points ran now."""

    points: list[Point]
    summaries: dict[str, dict[str, Any]]
    errors: dict[str, str]
    ran: int
    skipped: int
    files: list[Path]

    def status(self, point: Point) -> tuple[str, str | None]:
        if point.error is not None:
            return ERROR, point.error
        assert point.id is not None
        if point.id in self.summaries:
            return OK, None
        return ERROR, f"{self.errors.get(point.id, 'did not run')} (at {point.label})"

    @property
    def failed(self) -> list[Point]:
        return [p for p in self.points if self.status(p)[0] == ERROR]


Executor = Callable[[Sequence[Task], Callable[[Done], None]], None]
Progress = Callable[[int, int], Callable[[], None]]  # (points to run, points done already) -> one step


def run_sweep(out: Path, definition: Definition, points: Sequence[Point], executor: Executor, plots: bool = False,
              progress: Progress | None = None) -> Outcome:
    """Write sweep.json (a new sweep), run every point whose file is not complete on `executor`,
    writing each point's file as it comes back, then write the table."""
    out = Path(out)
    (out / POINTS).mkdir(parents=True, exist_ok=True)
    if not (out / DEFINITION).is_file():
        write_text_atomic(out / DEFINITION, json.dumps(definition.document(), indent=2, sort_keys=True) + "\n")
    summaries: dict[str, dict[str, Any]] = {}
    tasks: dict[str, Task] = {}
    for point in points:
        if point.id is None or point.id in summaries or point.id in tasks:
            continue
        assert point.scenario is not None
        summary = read_point(out, point, plots)
        if summary is None:
            tasks[point.id] = Task(point.id, point.scenario, definition.source, plots, point.sample)
        else:
            summaries[point.id] = summary
    errors: dict[str, str] = {}
    already = len(summaries)
    step = progress(len(tasks), already) if progress else None

    def done(result: Done) -> None:
        if result.text is None:
            errors[result.id] = result.error or "failed"
        else:
            if result.png is not None:
                with atomic_path(point_path(out, result.id, ".png")) as tmp:
                    tmp.write_bytes(result.png)
            write_text_atomic(point_path(out, result.id), result.text)
            summaries[result.id] = json.loads(result.text)["summary"]
        if step:
            step()

    # points sharing a workload back to back: a worker's `pool.WORKLOADS` then hashes its lookups once
    executor(sorted(tasks.values(), key=lambda task: Workloads.key(task.scenario)), done)
    outcome = Outcome(list(points), summaries, errors, len(tasks), already, [])
    outcome.files = write_tables(out, definition, outcome)
    return outcome


# ---- the table ---------------------------------------------------------------------------------------
def table(definition: Definition, outcome: Outcome) -> tuple[list[str], list[list[Any]], dict[str, list[Any]]]:
    """(header, rows, typed columns): per point its number, id, the keys' values as given, its sample
    (with --samples), status, error and every summary metric; the typed columns hold the keys' parsed values."""
    metrics = list(registered())
    keys = definition.keys
    sample = ["sample"] if definition.samples else []
    header = ["point", "id", *keys, *sample, "status", "error", *metrics]
    rows: list[list[Any]] = []
    parsed: dict[str, list[Any]] = {key: [] for key in keys}
    for point in outcome.points:
        status, error = outcome.status(point)
        summary = outcome.summaries.get(point.id or "", {}) if status == OK else {}
        rows.append([point.variant.index, point.id, *(text for _, text, _ in point.variant.overrides),
                     *([point.sample] if sample else []), status, error, *(summary.get(name) for name in metrics)])
        for key, _, value in point.variant.overrides:
            parsed[key].append(value)
    return header, rows, parsed


def sweep_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buf.getvalue()


def _arrow_column(values: Sequence[Any], texts: Sequence[Any] | None = None) -> Any:
    """A typed column: int64 when every value is an integer, float64 when every one is a number,
    else text (a key's values as given; JSON of anything else)."""
    import pyarrow as pa

    present = [v for v in values if v is not None]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, type=pa.int64())
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    if texts is not None:
        return pa.array(texts, type=pa.string())
    return pa.array([v if v is None or isinstance(v, str) else json.dumps(v, sort_keys=True) for v in values], type=pa.string())


def write_tables(out: Path, definition: Definition, outcome: Outcome) -> list[Path]:
    """sweep.csv and sweep.parquet, each written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    header, rows, parsed = table(definition, outcome)
    write_text_atomic(out / CSV, sweep_csv(header, rows))
    columns = {}
    for i, name in enumerate(header):
        values = [row[i] for row in rows]
        columns[name] = _arrow_column(parsed[name], values) if name in parsed else _arrow_column(values)
    with atomic_path(out / PARQUET) as tmp:
        pq.write_table(pa.table(columns), tmp)
    return [out / CSV, out / PARQUET]
