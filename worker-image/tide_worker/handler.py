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


class HandlerLoadError(Exception):
    """The handler cannot be loaded; its text is one line saying why (the worker exits 2 with it)."""


# Each also is the builtin error callers of load() have caught so far.
class BadSpecError(HandlerLoadError, ValueError): ...


class HandlerImportError(HandlerLoadError, ImportError): ...


class HandlerNotFoundError(HandlerLoadError, AttributeError): ...


class NotCallableError(HandlerLoadError, TypeError): ...


def load(spec: str) -> Handler:
    """Import ``package.module:function`` (attribute paths like ``mod:obj.method`` work too).

    Whatever goes wrong (no such module, the module raises or has a syntax error at import, no such
    attribute, not callable) raises HandlerLoadError with a one-line reason.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise BadSpecError(f"handler must look like 'module:function', not {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except SyntaxError as exc:
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else f"line {exc.lineno}"
        raise HandlerImportError(
            f"cannot import {module_name!r}: syntax error ({where}): {exc.msg}"
        ) from None
    except BaseException as exc:  # the module's own code raised (even SystemExit or KeyboardInterrupt)
        raise HandlerImportError(f"cannot import {module_name!r}: {_one_line(exc)}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except Exception as exc:  # AttributeError, or whatever a module __getattr__ raises
            raise HandlerNotFoundError(f"cannot find {attr!r} in {module_name!r}: {_one_line(exc)}") from None
    try:
        return adapt(obj, spec)
    except TypeError as exc:
        raise NotCallableError(str(exc)) from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 300 else text[:297] + "..."
