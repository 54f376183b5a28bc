"""One registry of strategy plugins, keyed by (kind, name).

A plugin is one class with a `Params` pydantic model and a one-line docstring. Built-ins
register themselves when `engramsim.plugins` is imported; third-party packages add plugins
through the `engramsim.plugins` entry-point group (each entry point names a module or a class
whose import runs `@register`), so a user adds a policy without touching this package.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from typing import Literal, TypeVar, overload

from engramsim.errors import InputError
from engramsim.scenario import StrategyChoice
from engramsim.scheduler import Scheduler, SchedulerParams
from engramsim.strategies import Cache, Hashing, HashingSetup, Params, Placement, Prefetch, SetupContext, Strategy, Transport
from engramsim.workload import Workload

BASES: dict[str, type] = {"scheduler": Scheduler, "hashing": Hashing, "placement": Placement, "cache": Cache, "prefetch": Prefetch,
                          "transport": Transport}
KINDS = tuple(BASES)
ENTRY_POINT_GROUP = "engramsim.plugins"

_PLUGINS: dict[tuple[str, str], type] = {}
_loaded = False
T = TypeVar("T", bound=type[Strategy] | type[Hashing] | type[Scheduler])


def register(kind: str, name: str) -> Callable[[T], T]:
    """Class decorator: make `cls` available as plugin `name` of `kind`."""
    if kind not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}; expected one of {', '.join(KINDS)}")

    def decorate(cls: T) -> T:
        base = BASES[kind]
        if not issubclass(cls, base):
            raise TypeError(f"{kind} plugin {name!r} ({cls.__name__}) must subclass {base.__module__}.{base.__name__}")
        if kind == "scheduler" and not issubclass(params_model(cls), SchedulerParams):
            raise TypeError(f"scheduler plugin {name!r} ({cls.__name__}): its Params must subclass engramsim.scheduler.SchedulerParams")
        key = (kind, name)
        if key in _PLUGINS and _PLUGINS[key] is not cls:
            raise ValueError(f"{kind} plugin {name!r} is already registered by {_PLUGINS[key].__module__}")
        cls.kind, cls.name = kind, name
        _PLUGINS[key] = cls
        return cls

    return decorate


def _load_entry_point(ep: importlib.metadata.EntryPoint) -> None:
    """Import one third-party entry point; any failure becomes a one-line error naming it."""
    dist = getattr(ep, "dist", None)
    where = f"entry point {ep.name!r} = {ep.value!r}" + (f" of package {dist.name!r}" if dist else "")
    try:
        loaded = ep.load()
    except Exception as exc:  # a plugin's import can fail in any way; report it, don't crash
        detail = " ".join(str(exc).split())
        raise InputError(where, f"cannot load plugin: {type(exc).__name__}: {detail}") from None
    if isinstance(loaded, type) and loaded not in _PLUGINS.values():
        raise InputError(where, f"class {loaded.__name__} is not registered; decorate it with @register(kind, name)")


def _load() -> None:
    """Register the built-ins, then every installed entry point (once per process)."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # set first: a plugin module may itself call get() while importing
    try:
        import engramsim.plugins  # noqa: F401  (registers the built-ins)

        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            _load_entry_point(ep)
    except BaseException:
        _loaded = False  # a broken plugin fails every lookup, not only the first
        raise


def get(kind: str, name: str) -> type:
    """The class registered as (kind, name); KeyError lists the known names of that kind."""
    _load()
    try:
        return _PLUGINS[(kind, name)]
    except KeyError:
        raise KeyError(f"unknown {kind} plugin {name!r}; known: {', '.join(names(kind)) or 'none'}") from None


def names(kind: str) -> list[str]:
    _load()
    return sorted(n for k, n in _PLUGINS if k == kind)


def plugins() -> list[tuple[str, str, type]]:
    """Every registered plugin as (kind, name, class), in KINDS order then by name."""
    _load()
    return sorted(((k, n, cls) for (k, n), cls in _PLUGINS.items()), key=lambda p: (KINDS.index(p[0]), p[1]))


def params_model(cls: type) -> type[Params]:
    """A plugin's params model; a plugin without one takes no params."""
    return getattr(cls, "Params", Params)


def summary(cls: type) -> str:
    """The first line of a plugin's docstring, shown by `engramsim plugins`."""
    return (cls.__doc__ or "").strip().split("\n", 1)[0]


@overload
def build(kind: Literal["placement"], choice: StrategyChoice, setup: SetupContext) -> Placement: ...
@overload
def build(kind: Literal["cache"], choice: StrategyChoice, setup: SetupContext) -> Cache: ...
@overload
def build(kind: Literal["prefetch"], choice: StrategyChoice, setup: SetupContext) -> Prefetch: ...
@overload
def build(kind: Literal["transport"], choice: StrategyChoice, setup: SetupContext) -> Transport: ...
@overload
def build(kind: str, choice: StrategyChoice, setup: SetupContext) -> Strategy: ...


def build(kind: str, choice: StrategyChoice, setup: SetupContext) -> Strategy:
    """Validate `choice.params` with the plugin's `Params` model and instantiate the plugin.

    Raises KeyError for an unknown name and pydantic's ValidationError for bad params;
    `scenario_io.load_scenario` has already turned both into located errors for a loaded file.
    """
    cls = get(kind, choice.name)
    return cls(params_model(cls).model_validate(choice.params), setup)


def scheduler_params(choice: StrategyChoice) -> SchedulerParams:
    """The scheduler's params, validated by its plugin's model (see `build`)."""
    model = params_model(get("scheduler", choice.name))
    assert issubclass(model, SchedulerParams)  # register() checks every scheduler plugin's params
    return model.model_validate(choice.params)


def scheduler_class(choice: StrategyChoice) -> type[Scheduler]:
    """The scenario's scheduler plugin class."""
    cls = get("scheduler", choice.name)
    assert issubclass(cls, Scheduler)  # register() checks every scheduler plugin's base
    return cls


def build_scheduler(choice: StrategyChoice, workload: Workload, kv_blocks: int) -> Scheduler:
    """A fresh serving engine of the scenario's scheduler plugin over `workload`, with `kv_blocks` KV-cache blocks (see `build`)."""
    return scheduler_class(choice)(scheduler_params(choice), workload, kv_blocks)


def build_hashing(choice: StrategyChoice, setup: HashingSetup) -> Hashing:
    """The scenario's hashing plugin, built from its Engram config (see `build`)."""
    cls = get("hashing", choice.name)
    assert issubclass(cls, Hashing)  # register() checks every hashing plugin's base
    return cls.from_setup(params_model(cls).model_validate(choice.params), setup)
