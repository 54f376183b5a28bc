"""`engramsim plugins`: every strategy plugin installed, built-in or third-party, with its params."""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic.fields import FieldInfo
from rich.console import Console
from rich.table import Table

from engramsim import registry
from engramsim.commands import HELP

_OPERATORS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plugins", help=HELP["plugins"])
    p.set_defaults(handler=plugins)


def type_name(annotation: Any, metadata: Sequence[Any] = ()) -> str:
    """A readable type: 'int > 0 | None' rather than 'Optional[Annotated[int, Gt(gt=0)]]'."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0], [*metadata, *annotation.__metadata__])
    if origin in (typing.Union, types.UnionType):
        text = " | ".join(type_name(a) for a in args)
    elif origin is typing.Literal:
        text = " | ".join(repr(a) for a in args)
    elif origin is not None:
        text = f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    elif annotation is type(None):
        text = "None"
    else:
        text = getattr(annotation, "__name__", str(annotation))
    bounds = [f"{op} {getattr(m, attr)}" for m in metadata for attr, op in _OPERATORS if getattr(m, attr, None) is not None]
    return " ".join([text, *bounds])


def describe_param(name: str, field: FieldInfo) -> str:
    default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
    return f"{name}: {type_name(field.annotation, field.metadata)} = {default}"


def plugins(args: argparse.Namespace) -> int:
    table = Table(title="engramsim plugins")
    table.add_column("kind", no_wrap=True)
    table.add_column("name", no_wrap=True)
    table.add_column("params")
    table.add_column("description")
    for kind, name, cls in registry.plugins():
        fields = registry.params_model(cls).model_fields
        params = "\n".join(describe_param(n, f) for n, f in fields.items()) or "-"
        table.add_row(kind, name, params, registry.summary(cls))
    Console().print(table)
    return 0
