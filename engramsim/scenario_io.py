"""Load a scenario file: YAML, then `--set` overrides, then validation, then the plugins' params.

Every problem becomes one `InputError` line naming the file, the dotted field path, the bad
value and what was expected, so a user fixes their YAML without reading a traceback. Names
that need other modules to resolve (trace, hardware profile, table capacity) are checked later.
"""

from __future__ import annotations

import copy
import difflib
import re
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from engramsim import registry
from engramsim.errors import InputError
from engramsim.scenario import SAFE_NAME, Scenario

_MAX_VALUE_CHARS = 60


def load_scenario(path: str | Path, overrides: Sequence[str] = ()) -> Scenario:
    """Read, override (`KEY.PATH=VALUE` strings) and validate the scenario at `path`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "no such scenario file") from None
    except OSError as exc:
        raise InputError(path, f"cannot read the scenario: {exc.strerror or _one_line(exc)}") from None
    except UnicodeDecodeError as exc:
        raise InputError(path, f"cannot read the scenario: {_one_line(exc)}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(path, f"invalid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise InputError(path, "invalid YAML: nested too deeply") from None
    return scenario_from_dict(data, source=str(path), overrides=overrides)


def scenario_from_dict(data: Any, source: str = "<dict>", overrides: Sequence[str] = ()) -> Scenario:
    """Validate already-parsed scenario data (e.g. from a test) with the same errors as a file."""
    if data is None:
        raise InputError(source, "the scenario is empty; expected a mapping with at least 'name'")
    if not isinstance(data, dict):
        raise InputError(source, f"expected a mapping of scenario sections at the top level, got {_kind(data)}")
    data = copy.deepcopy(data)
    overridden = [apply_override(data, item, source) for item in overrides]
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        field, problem = describe_error(exc, Scenario)
        raise InputError(source, problem + _from_set(field, overridden), field) from None
    check_strategies(scenario, source)
    return scenario


def dump_scenario(scenario: Scenario) -> dict[str, Any]:
    """The resolved scenario as JSON-safe data, defaults filled in, for echoing into results."""
    return scenario.model_dump(mode="json")


def check_strategies(scenario: Scenario, source: str) -> None:
    """Each strategy must name a registered plugin and give params its `Params` model accepts."""
    for kind in registry.KINDS:
        choice = getattr(scenario.strategies, kind)
        field = f"strategies.{kind}"
        known = registry.names(kind)
        if choice.name not in known:
            problem = f"unknown {kind} plugin {choice.name!r}; {_did_you_mean(choice.name, known, 'known')}"
            raise InputError(source, problem, f"{field}.name")
        model = registry.params_model(registry.get(kind, choice.name))
        try:
            model.model_validate(choice.params)
        except ValidationError as exc:
            sub, problem = describe_error(exc, model)
            raise InputError(source, f"{problem} (params of {kind} plugin {choice.name!r})", f"{field}.params.{sub}".rstrip(".")) from None


# ---- --set overrides ---------------------------------------------------------------------------
def apply_override(data: dict[str, Any], item: str, source: str) -> str:
    """Set `data[a][b]... = value` for `item` = 'a.b...=value'; return the dotted path.

    The value is parsed as YAML, so `8` is an int and `[1,15]` a list. The path is checked
    against the schema as it is walked, so a typo is reported at the key where it happens.
    """
    key, sep, text = item.partition("=")
    key = key.strip()
    keys = key.split(".")
    if not sep or not all(keys):
        raise InputError(source, f"--set {item!r}: expected KEY.PATH=VALUE, e.g. workload.requests=8")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(source, f"--set value {text!r} is not valid YAML: {_yaml_problem(exc)}", key) from None
    node: dict[str, Any] = data
    model: type[BaseModel] | None = Scenario
    for depth, name in enumerate(keys):
        here = ".".join(keys[: depth + 1])
        if model is not None and name not in model.model_fields:
            raise InputError(source, f"--set: {_unknown_key(name, model)}", here)
        if depth == len(keys) - 1:
            node[name] = value
            break
        section = _section_model(model, name) if model is not None else None
        if model is not None and section is None and not _is_mapping_field(model, name):
            raise InputError(source, f"--set: '{name}' holds a value, not a section; set {here}=VALUE", here)
        child = node.get(name)
        if child is None:
            child = _default_section(model, name) if model is not None else {}
        elif not isinstance(child, dict):
            child = _expand_shorthand(section, child, source, here)
        node[name] = child
        node, model = child, section
    return key


def _default_section(model: type[BaseModel], name: str) -> dict[str, Any]:
    """A section the file leaves out starts from its default, so `--set strategies.cache.params.x=1`
    keeps the default cache's name."""
    default = model.model_fields[name].get_default(call_default_factory=True)
    return default.model_dump() if isinstance(default, BaseModel) else {}


def _expand_shorthand(section: type[BaseModel] | None, value: Any, source: str, field: str) -> dict[str, Any]:
    """`hardware: h100-sxm` or `cache: none` written as a scalar becomes its mapping form, so a
    `--set` can go one level deeper into it."""
    if section is not None:
        try:
            return section.model_validate(value).model_dump(exclude_unset=True)
        except ValidationError:
            pass
    raise InputError(source, f"--set: expected a section here, the file holds {_show(value)}", field)


def _from_set(field: str | None, overridden: list[str]) -> str:
    hit = field and any(field == k or field.startswith(k + ".") or k.startswith(field + ".") for k in overridden)
    return " (from --set)" if hit else ""


# ---- error text --------------------------------------------------------------------------------
def describe_error(exc: ValidationError, model: type[BaseModel]) -> tuple[str, str]:
    """The first validation error as (dotted field path, problem with value and expectation)."""
    errors = exc.errors(include_url=False)
    err = errors[0]
    kind, msg, value = err["type"], err["msg"], err.get("input")
    loc = tuple(err["loc"])[:-1] if kind == "invalid_key" else tuple(err["loc"])  # the key itself is the bad value
    field = _dotted(loc)
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        problem = _unknown_key(str(loc[-1]), parent) if parent else f"unknown key {loc[-1]!r}"
    elif kind == "invalid_key":
        problem = f"keys must be strings, got {_show(value)}"
    elif kind == "missing":
        problem = f"missing required key {loc[-1]!r}"
    elif kind == "value_error":
        problem = msg.removeprefix("Value error, ")
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        problem = f"expected a mapping (a section of keys), got {_show(value)}"
    elif kind == "string_pattern_mismatch" and err["ctx"]["pattern"] == SAFE_NAME:
        problem = f"expected a name that is one path component (letters, digits, '.', '_', '-', starting with a letter or digit), got {_show(value)}"
    elif kind == "literal_error":
        problem = f"expected one of {err['ctx']['expected']}, got {_show(value)}"
    else:
        expected = re.split(r", (?=unable |got )", msg.removeprefix("Input should be "))[0]
        expected = expected[0].lower() + expected[1:]
        if expected.startswith(("greater", "less")):
            expected = f"a value {expected}"
        problem = f"expected {expected}, got {_show(value)}"
    if len(errors) > 1:
        problem += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return field, problem


def _dotted(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unknown_key(key: str, model: type[BaseModel]) -> str:
    valid = list(model.model_fields)
    return f"unknown key {key!r}; {_did_you_mean(key, valid, 'valid keys')}"


def _did_you_mean(word: str, choices: list[str], label: str) -> str:
    """The closest choice if one is close, else all of them: the shortest useful hint."""
    close = difflib.get_close_matches(str(word), choices, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"{label}: {', '.join(choices)}" if choices else "none are allowed here"


def _section_model(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    """The pydantic model a field holds (also through `X | None`), or None for a plain value."""
    annotation = model.model_fields[name].annotation
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_mapping_field(model: type[BaseModel], name: str) -> bool:
    annotation = model.model_fields[name].annotation
    return annotation is dict or typing.get_origin(annotation) is dict


def _model_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model of the section at `loc`, or None when `loc` leaves the schema's models."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return None
        current = _section_model(current, part)
    return current


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."


def _kind(value: Any) -> str:
    names = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    return names.get(type(value), f"a {type(value).__name__}") + f" ({_show(value)})"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return _one_line(exc)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())

