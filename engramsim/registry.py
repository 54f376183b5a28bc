"""One registry of strategy plugins, keyed by (kind, name).

A plugin is one class with a `Params` pydantic model; built-ins register themselves when
`engramsim.plugins` is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

KINDS = ("hashing", "placement", "cache", "prefetch", "transport")

_PLUGINS: dict[tuple[str, str], type] = {}
T = TypeVar("T", bound=type)


def register(kind: str, name: str) -> Callable[[T], T]:
    """Class decorator: make `cls` available as plugin `name` of `kind`."""
    if kind not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}; expected one of {', '.join(KINDS)}")

    def decorate(cls: T) -> T:
        key = (kind, name)
        if key in _PLUGINS and _PLUGINS[key] is not cls:
            raise ValueError(f"{kind} plugin {name!r} is already registered by {_PLUGINS[key].__module__}")
        cls.kind, cls.name = kind, name
        _PLUGINS[key] = cls
        return cls

    return decorate


def _load_builtins() -> None:
    import engramsim.plugins  # noqa: F401  (registers the built-ins)


def get(kind: str, name: str) -> type:
    _load_builtins()
    try:
        return _PLUGINS[(kind, name)]
    except KeyError:
        raise KeyError(f"unknown {kind} plugin {name!r}; known: {', '.join(names(kind))}") from None


def names(kind: str) -> list[str]:
    _load_builtins()
    return sorted(n for k, n in _PLUGINS if k == kind)
