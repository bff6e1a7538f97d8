"""Load the user's handler (``module:function``) and classify it as sync or async."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tide_worker.envelope import Message


@dataclass(frozen=True)
class Handler:
    func: Callable[[Message], Any]
    is_async: bool
    name: str


def is_async_callable(func: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - callable objects with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def adapt(func: Callable[[Message], Any], name: str = "") -> Handler:
    if not callable(func):
        raise TypeError(f"handler {name or func!r} is not callable")
    return Handler(func=func, is_async=is_async_callable(func), name=name or getattr(func, "__name__", "?"))


def load(spec: str) -> Handler:
    """Import ``package.module:function`` (attribute paths like ``mod:obj.method`` work too)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"handler must look like 'module:function', not {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return adapt(obj, spec)
