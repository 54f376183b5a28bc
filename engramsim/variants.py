"""The variants of `engramsim compare`: `--vary KEY.PATH=V1,V2,...` options parsed, their cartesian
product (the first `--vary` varying slowest), and each variant's scenario validated.

Values are YAML, as `--set` parses them, split on the commas outside braces, brackets and quotes
(so `{name: lru, params: {rows: 100000}}` or `[1,15]` is one value); each variant's values are
applied as `--set` overrides after the common ones. Every problem is one `InputError` line naming
--vary and the field, found before any variant runs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from engramsim.errors import InputError
from engramsim.scenario import Scenario
from engramsim.scenario_io import apply_override, load_scenario

MAX_VARIANTS = 1000


@dataclass(frozen=True)
class Vary:
    """One `--vary`: a scenario key path and its values, as given (YAML text) and parsed."""

    key: str
    texts: tuple[str, ...]
    values: tuple[Any, ...]
    flag: str = "--vary"  # the option that gave it, named in its errors (`engramsim sweep`: --grid, --zip)


def split_values(text: str) -> list[str]:
    """`text` split on the commas outside braces, brackets and quotes, so a flow mapping or list is
    one value: 'lru,{name: lru, params: {rows: 10}},[1,15]' -> three values. A quote opens a
    string only where a YAML scalar can start. ValueError for unbalanced brackets or an open quote."""
    items: list[str] = []
    stack: list[str] = []
    quote: str | None = None
    start, prev, escaped = 0, "", False  # prev: the last non-blank character outside quotes ("" at an item's start)
    closing = {"{": "}", "[": "]"}
    for i, ch in enumerate(text):
        if quote is not None:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote, prev = None, ch
            continue
        if ch in "'\"" and prev in ("", ",", "{", "[", ":"):
            quote = ch
        elif ch in closing:
            stack.append(closing[ch])
        elif ch in "}]":
            if not stack or stack.pop() != ch:
                raise ValueError(f"unbalanced {ch!r} at character {i + 1}")
        elif ch == "," and not stack:
            items.append(text[start:i])
            start, prev = i + 1, ""
            continue
        if not ch.isspace():
            prev = ch
    if quote is not None:
        raise ValueError(f"unclosed {quote} quote")
    if stack:
        raise ValueError(f"unclosed {'{' if stack[-1] == '}' else '['}")
    items.append(text[start:])
    return items


def parse_vary(item: str, flag: str = "--vary") -> Vary:
    """One `--vary KEY.PATH=V1,V2,...` (or `flag`); an `InputError` naming the flag and the key when malformed."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or not all(part.strip() for part in key.split(".")):
        raise InputError(flag, f"expected KEY.PATH=V1,V2,..., e.g. strategies.transport=staged,zero-copy; got {item!r}")
    if not text.strip():
        raise InputError(flag, "no values; expected V1,V2,... after '='", field=key)
    try:
        texts = [t.strip() for t in split_values(text)]
    except ValueError as exc:
        raise InputError(flag, f"{exc} in {text!r}", field=key) from None
    if not all(texts):
        raise InputError(flag, f"an empty value in {text!r}; expected V1,V2,...", field=key)
    values: list[Any] = []
    for t in texts:
        try:
            value = yaml.safe_load(t)
        except yaml.YAMLError as exc:
            raise InputError(flag, f"value {t!r} is not valid YAML ({' '.join(str(exc).split())})", field=key) from None
        if any(value == earlier and type(value) is type(earlier) for earlier in values):
            raise InputError(flag, f"value {t!r} is given twice", field=key)
        values.append(value)
    return Vary(key, tuple(texts), tuple(values), flag)


def _overlap(a: str, b: str) -> bool:
    """Whether setting key path `a` and key path `b` touch the same field (equal, or one inside the other)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def parse_varies(items: Sequence[str], sets: Sequence[str] = ()) -> list[Vary]:
    """Every `--vary`: at least one, no key twice or inside another, none a `--set` also sets, none
    choosing the backend, at most `MAX_VARIANTS` variants."""
    if not items:
        raise InputError("--vary", "nothing to compare; give at least one --vary KEY.PATH=V1,V2,...")
    varies = [parse_vary(item) for item in items]
    check_keys(varies, sets, "compare runs every variant on one --backend (sim by default); the backend cannot vary")
    count = int(np.prod([len(v.values) for v in varies]))
    if count > MAX_VARIANTS:
        raise InputError("--vary", f"{count:,} variants; at most {MAX_VARIANTS:,} (vary fewer keys or values)")
    return varies


def check_keys(varies: Sequence[Vary], sets: Sequence[str], backend_fixed: str) -> None:
    """No key given twice or inside another, none a `--set` also sets, none choosing the backend
    (`backend_fixed` says why); each error names the flag of the later key."""
    for i, vary in enumerate(varies):
        if _overlap(vary.key, "run.backend"):
            raise InputError(vary.flag, backend_fixed, field=vary.key)
        for other in varies[:i]:
            if _overlap(vary.key, other.key):
                what = "is given twice" if vary.key == other.key else f"overlaps {other.flag} {other.key}"
                raise InputError(vary.flag, f"{what}; give each key once", field=vary.key)
        for item in sets:
            set_key = item.partition("=")[0].strip()
            if _overlap(vary.key, set_key):
                raise InputError(vary.flag, f"is also set by --set {item!r}; vary it or set it, not both", field=vary.key)


def check_key_paths(varies: Sequence[Vary]) -> None:
    """Each key is a field of the scenario schema (walked as `--set` walks it, whatever the value),
    else one `InputError` naming the flag and the key."""
    for vary in varies:
        try:
            apply_override({}, f"{vary.key}=null", vary.flag)
        except InputError as exc:
            raise InputError(vary.flag, exc.problem.removeprefix("--set: "), field=exc.field) from None


@dataclass(frozen=True)
class Variant:
    """One combination of the `--vary` values: `index` from 1, `name` like 'transport=staged, prefetch=on-demand'."""

    index: int
    name: str
    overrides: tuple[tuple[str, str, Any], ...]  # (key, text, value) per --vary

    def sets(self) -> list[str]:
        return [f"{key}={text}" for key, text, _ in self.overrides]


def short_keys(keys: Sequence[str]) -> list[str]:
    """Each key's last component where those are distinct, else the whole key paths."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return last if len(set(last)) == len(last) else list(keys)


def variants(varies: Sequence[Vary], zipped: Sequence[Vary] = ()) -> list[Variant]:
    """The cartesian product of the values, the first --vary varying slowest; `zipped` (lists of one
    length) advance together as one more axis, varying fastest."""
    shorts = short_keys([v.key for v in (*varies, *zipped)])
    axes: list[list[tuple[tuple[Vary, str, Any], ...]]] = [[((v, t, x),) for t, x in zip(v.texts, v.values, strict=True)] for v in varies]
    if zipped:
        axes.append([tuple((v, v.texts[i], v.values[i]) for v in zipped) for i in range(len(zipped[0].values))])
    out = []
    for index, combo in enumerate(itertools.product(*axes), start=1):
        overrides = tuple((v.key, text, value) for axis in combo for v, text, value in axis)
        name = ", ".join(f"{short}={text}" for short, (_, text, _) in zip(shorts, overrides, strict=True))
        out.append(Variant(index, name, overrides))
    return out


def load_variants(path: str | Path, sets: Sequence[str], varies: Sequence[Vary],
                  backend: str = "sim") -> list[tuple[Variant, Scenario]]:
    """Every variant's scenario, with run.backend the comparison's `backend`, validated before any
    runs: an error a --vary value causes (in its field, or anywhere when the scenario and the --sets
    alone are valid) names --vary, the field and the variant; any other is the scenario's or a --set's own line."""
    loaded = []
    base = [f"run.backend={backend}", *sets]
    for variant in variants(varies):
        scenario = load_variant(path, base, variant)
        if isinstance(scenario, InputError):
            raise InputError("--vary", f"{value_problem(scenario)} (variant {variant.index}: {variant.name})",
                             field=scenario.field) from None
        if scenario.run.backend != backend:
            raise InputError("--set", f"compare runs every variant on --backend {backend}; leave run.backend to --backend",
                             field="run.backend")
        loaded.append((variant, scenario))
    return loaded


def load_variant(path: str | Path, base: Sequence[str], variant: Variant) -> Scenario | InputError:
    """The variant's scenario (the `base` overrides, then its values), or the error its values cause:
    one in a field it sets, or any when the scenario and `base` alone are valid. Any other error is
    the scenario's or a --set's own, and is raised."""
    try:
        return load_scenario(path, [*base, *variant.sets()])
    except InputError as exc:
        in_field = exc.field is not None and any(_overlap(exc.field, key) or exc.field.startswith(key + "[")
                                                 for key, _, _ in variant.overrides)
        if not in_field and not _loads(path, base):
            raise
        return exc


def value_problem(exc: InputError) -> str:
    """The problem of an error a variant's values caused, without the `--set` wording."""
    return exc.problem.removeprefix("--set: ").removesuffix(" (from --set)")


def _loads(path: str | Path, overrides: Sequence[str]) -> bool:
    try:
        load_scenario(path, overrides)
    except InputError:
        return False
    return True
