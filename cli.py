"""Command-line flags generated from config dataclasses, so no flag is written twice.

Each field becomes ``--name`` with its default, its type (``X | None`` accepts X; tuples take
several values; bools get ``--name/--no-name``), ``choices`` and the ``help`` from its metadata.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def option(default, help: str, **extra):
    """A dataclass field that carries its CLI help (and optional ``choices``)."""
    return dataclasses.field(default=default, metadata={"help": help, **extra})


def _argparse_kwargs(tp, default) -> dict:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        nargs = "+" if len(args) == 2 and args[1] is Ellipsis else len(args)
        return {"type": args[0], "nargs": nargs}
    return {"type": tp}


def add_config_args(parser: argparse.ArgumentParser, cls, title: str | None = None, skip=()) -> None:
    """Add one flag per field of dataclass ``cls`` (fields in ``skip`` left out). A field whose flag an
    earlier config already added shares that flag: one value feeds both configs."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title or cls.__name__)
    existing = {s for action in parser._actions for s in action.option_strings}
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init or f"--{f.name}" in existing:
            continue
        kwargs = _argparse_kwargs(hints[f.name], f.default)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        group.add_argument(f"--{f.name}", default=f.default, help=f.metadata.get("help", "") + " (default: %(default)s)",
                           **kwargs)


def config_from_args(cls, args: argparse.Namespace, **overrides):
    """Build ``cls`` from the parsed flags (fields missing from ``args`` keep their defaults). A flag that
    takes several values gives a tuple, as its field declares (argparse gives a list)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**{**values, **overrides})


def check_config(owner: str, checks) -> None:
    """Raise ``ValueError("<owner>: <message>.")`` for the first ``(ok, message)`` pair that fails."""
    for ok, message in checks:
        if not ok:
            raise ValueError(f"{owner}: {message}.")
