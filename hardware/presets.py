"""Loading hardware profiles: shipped presets by name, or a user's YAML file.

A profile file holds the `HardwareProfile` fields. Its `link` is either an inline mapping of the
`Link` fields or the name of a link preset (so the PCIe numbers live in one file, not in every profile).
A link file holds `link:` (the `Link` fields) and `provenance:`. Every problem — unknown name,
unreadable file, broken YAML, a bad or missing field — is one InputError line naming the file
and the field, so the CLI can print it and exit 2.

Tiers beyond host DRAM (CXL memory, NVMe) come the same way: a tier file
(`profiles/tiers/<name>.yaml`) holds `cxl:` or `nvme:` (the `CXL` / `NVMe` fields) and
`provenance:`; a profile's `cxl:` / `nvme:` names one or is inline; a scenario's `hardware.cxl` /
`hardware.nvme` adds or replaces one, by name, path, or a mapping of fields with an optional
`preset:` they override (`{preset: nvme-gen5-9550, drives: 8}`).

A profile's `uncertainty:` spreads (`Spread`) are checked against its numbers (`spread_problem`);
replacing its link drops the spreads of the old link's numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from engramsim.errors import InputError
from engramsim.hardware.profile import CXL, HardwareProfile, Link, NVMe, Provenance, spread_problem
from engramsim.scenario_io import describe_error

if TYPE_CHECKING:  # importlib.resources.abc is Python 3.11+; only annotations need it
    from importlib.resources.abc import Traversable

_SUFFIXES = (".yaml", ".yml")


def _profiles_dir() -> Traversable:
    return resources.files("engramsim.hardware").joinpath("profiles")


def _names(folder: Traversable) -> list[str]:
    return sorted(f.name.rsplit(".", 1)[0] for f in folder.iterdir() if f.is_file() and f.name.endswith(_SUFFIXES))


def profile_names() -> list[str]:
    """Names of the shipped full-profile presets (GPU + link + host)."""
    return _names(_profiles_dir())


def link_names() -> list[str]:
    """Names of the shipped link presets (usable as `link=` or as a profile's `link:`)."""
    return _names(_profiles_dir().joinpath("links"))


TierKind = Literal["cxl", "nvme"]
TIER_MODELS: dict[str, type[BaseModel]] = {"cxl": CXL, "nvme": NVMe}
TierRef = str | Path | Mapping[str, Any]


def tier_names(kind: TierKind | None = None) -> list[str]:
    """Names of the shipped tier presets (of one kind: a name starts with it)."""
    names = _names(_profiles_dir().joinpath("tiers"))
    return [n for n in names if kind is None or n.startswith(f"{kind}-")]


def _is_path(name_or_path: str | Path) -> bool:
    """A Path, a name with a YAML suffix, or one with a directory part is a file; else a preset name."""
    text = str(name_or_path)
    return isinstance(name_or_path, Path) or text.endswith(_SUFFIXES) or "/" in text or "\\" in text


def _resolve(name_or_path: str | Path, folder: Traversable, known: list[str], what: str, field: str) -> tuple[str, str]:
    """(display name of the source, its text) for a preset name or a file path."""
    if _is_path(name_or_path):
        path = Path(name_or_path)
        try:
            return str(path), path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(path, f"no such {what} file", field) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(path, f"cannot read the {what} file: {' '.join(str(exc).split())}", field) from None
    name = str(name_or_path)
    if name not in known:
        raise InputError(name, f"unknown {what} preset {name!r}; known presets: {', '.join(known)} (or give a .yaml path)", field)
    return f"{what} preset {name}", folder.joinpath(f"{name}.yaml").read_text(encoding="utf-8")


def _parse(source: str, text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise InputError(source, f"invalid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise InputError(source, f"expected a mapping at the top level, got {type(data).__name__}")
    return data


def _validate(model: type[BaseModel], data: Any, source: str, prefix: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field, problem = describe_error(exc, model)
        raise InputError(source, problem, f"{prefix}{field}" if field else prefix.rstrip(".") or None) from None


def load_link(name_or_path: str | Path) -> tuple[Link, Provenance]:
    """A link preset (by name) or link file: its `Link` section and where its numbers come from."""
    source, text = _resolve(name_or_path, _profiles_dir().joinpath("links"), link_names(), "link", "hardware.link")
    data = _parse(source, text)
    unknown = sorted(set(data) - {"link", "provenance"})
    if unknown:
        raise InputError(source, f"unknown key {unknown[0]!r}; a link file holds 'link' and 'provenance'", unknown[0])
    for key in ("link", "provenance"):
        if key not in data:
            raise InputError(source, f"missing required key {key!r}", key)
    return _validate(Link, data["link"], source, "link."), _validate(Provenance, data["provenance"], source, "provenance.")


def _tier_file(kind: TierKind, name_or_path: str | Path, field: str) -> tuple[dict[str, Any], Provenance, str]:
    """A tier preset or file as (its fields, its provenance, where it came from)."""
    source, text = _resolve(name_or_path, _profiles_dir().joinpath("tiers"), tier_names(kind), f"{kind} tier", field)
    data = _parse(source, text)
    unknown = sorted(set(data) - {kind, "provenance"})
    if unknown:
        raise InputError(source, f"unknown key {unknown[0]!r}; a {kind} tier file holds {kind!r} and 'provenance'", unknown[0])
    for key in (kind, "provenance"):
        if key not in data:
            raise InputError(source, f"missing required key {key!r}", key)
    if not isinstance(data[kind], dict):
        raise InputError(source, f"expected a mapping of {TIER_MODELS[kind].__name__} fields", kind)
    return dict(data[kind]), _validate(Provenance, data["provenance"], source, "provenance."), source


def load_tier(kind: TierKind, ref: TierRef, field: str | None = None) -> tuple[CXL | NVMe, Provenance | None]:
    """A CXL or NVMe tier: a preset name, a tier file, or a mapping of fields (with an optional
    `preset:` whose fields they override). Errors name `field` (default `hardware.<kind>`)."""
    field = field or f"hardware.{kind}"
    provenance = None
    if isinstance(ref, Mapping):
        fields = dict(ref)
        base = fields.pop("preset", None)
        source = f"inline {kind} tier"
        if base is not None:
            if not isinstance(base, str):
                raise InputError(source, f"expected a {kind} tier preset name or file, got {base!r}", f"{field}.preset")
            preset, base_provenance, _ = _tier_file(kind, base, f"{field}.preset")
            fields = preset | fields
            overridden = sorted(ref.keys() - {"preset"})
            provenance = base_provenance if not overridden else base_provenance.model_copy(
                update={"source": f"{base_provenance.source}; overridden: {', '.join(overridden)}"})
        tier = _validate(TIER_MODELS[kind], fields, source, f"{field}.")
    else:
        fields, provenance, source = _tier_file(kind, ref, field)
        tier = _validate(TIER_MODELS[kind], fields, source, f"{kind}.")
    return tier, provenance


def _tiers(data: dict[str, Any], source: str, profile: str | Path) -> None:
    """A profile file's `cxl:` / `nvme:` given by preset name or path, resolved in place (a
    path relative to the profile's folder); errors name the profile."""
    for kind in ("cxl", "nvme"):
        ref = data.get(kind)
        if not isinstance(ref, str):
            continue
        target: str | Path = ref
        if _is_path(ref) and _is_path(profile) and not Path(ref).is_absolute():
            target = Path(profile).parent / ref
        try:
            data[kind] = load_tier(kind, target, kind)[0].model_dump()
        except InputError as exc:
            raise InputError(source, exc.problem if exc.source == str(target) else str(exc), kind) from None


def _linked(name: str, source: str, profile: str | Path) -> dict[str, Any]:
    """A profile's `link: NAME` resolved (a path relative to the profile's folder); errors name the profile."""
    target: str | Path = name
    if _is_path(name) and _is_path(profile) and not Path(name).is_absolute():
        target = Path(profile).parent / name
    try:
        return load_link(target)[0].model_dump()
    except InputError as exc:
        unknown_name = exc.source == str(target) and exc.field == "hardware.link"
        raise InputError(source, exc.problem if unknown_name else str(exc), "link") from None


def load_profile(name_or_path: str | Path, link: str | Path | None = None, cxl: TierRef | None = None,
                 nvme: TierRef | None = None) -> HardwareProfile:
    """The profile named (a shipped preset) or at a path, optionally with its link replaced and a
    CXL or NVMe tier added or replaced (`load_tier`).

    `link` is a link preset name or a link file; the result's name gets `+<link name>` and its
    provenance source records the replacement, so results say which link was priced. A tier given
    here is recorded in the provenance the same way (the name is kept).
    """
    source, text = _resolve(name_or_path, _profiles_dir(), profile_names(), "hardware profile", "hardware.profile")
    data = _parse(source, text)
    if isinstance(data.get("link"), str):
        data["link"] = _linked(data["link"], source, name_or_path)
    _tiers(data, source, name_or_path)
    profile: HardwareProfile = _validate(HardwareProfile, data, source)
    problem = spread_problem(profile)
    if problem is not None:
        raise InputError(source, problem[1], f"uncertainty.{problem[0]}")
    for kind, ref in (("cxl", cxl), ("nvme", nvme)):
        if ref is None:
            continue
        tier, tier_provenance = load_tier(kind, ref)  # type: ignore[arg-type]
        said = tier_provenance.source if tier_provenance is not None else "given inline"
        provenance = profile.provenance.model_copy(update={"source": f"{profile.provenance.source}; {kind} tier: {tier.name} ({said})"})
        profile = profile.model_copy(update={kind: tier, "provenance": provenance})
    if link is None:
        return profile
    new_link, link_provenance = load_link(link)
    provenance = profile.provenance.model_copy(
        update={"source": f"{profile.provenance.source}; link replaced by {link} ({link_provenance.source})"}
    )
    kept = {key: spread for key, spread in profile.uncertainty.items() if not key.startswith("link.")}  # they spread the old link's numbers
    return profile.model_copy(update={"name": f"{profile.name}+{link}", "link": new_link, "provenance": provenance, "uncertainty": kept})
