"""Event handlers: sync or async callables, with optional typed payload validation."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import msgspec

_UNTYPED = (inspect.Parameter.empty, Any, object)


class Handler:
    """A registered handler, inspected once so each call does no introspection.

    ``arity`` is how many positional arguments it takes (a server-level handler gets
    ``(socket, data)``, a socket-level or client handler ``(data)``; fewer are allowed, and
    every registration (``on``, ``on_connection``, ``on_message``, ``authenticate``, ...)
    follows that one rule). A handler that needs more than it is given is refused at
    registration, with a TypeError that says what it will be called with.
    ``data_type`` is the annotation of the data parameter, validated with msgspec.
    """

    __slots__ = ("arity", "data_type", "fn", "is_async", "name")

    def __init__(
        self, fn: Callable[..., Any], *, max_args: int, called_with: str | None = None
    ) -> None:
        if not callable(fn):
            raise TypeError(f"handler must be callable, got {fn!r}")
        self.fn = fn
        self.name = getattr(fn, "__qualname__", repr(fn))
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
        )
        params, var_args, keyword_only = _parameters(fn)
        required = [p for p in params if p.default is inspect.Parameter.empty]
        if len(required) > max_args or keyword_only:
            given = called_with or f"{max_args} argument{'s' if max_args != 1 else ''}"
            needs = (
                f"keyword-only arguments ({', '.join(keyword_only)}) without defaults"
                if keyword_only else f"{len(required)} arguments"
            )
            raise TypeError(
                f"handler {self.name} needs {needs}, but it is called with {given}: "
                f"take at most {max_args} (fewer are fine)"
            )
        self.arity = max_args if var_args else min(len(params), max_args)
        self.data_type: Any = None
        if self.arity == max_args and len(params) >= max_args:
            self.data_type = _annotation(fn, params[max_args - 1])

    def convert(self, data: Any) -> Any:
        """Validate ``data`` against the annotation (raises msgspec.ValidationError)."""
        if self.data_type is None:
            return data
        return msgspec.convert(data, self.data_type)


def _parameters(fn: Callable[..., Any]) -> tuple[list[inspect.Parameter], bool, list[str]]:
    """The positional parameters, whether ``*args`` takes any number more, and the
    keyword-only parameters a call would have to pass (no default)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return [], True, []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [p for p in sig.parameters.values() if p.kind in kinds]
    var_args = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in sig.parameters.values())
    keyword_only = [
        p.name for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
    return params, var_args, keyword_only


def _annotation(fn: Callable[..., Any], param: inspect.Parameter) -> Any:
    if param.annotation in _UNTYPED:
        return None
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn).__call__
    try:
        hints = typing.get_type_hints(target)
    except Exception as exc:
        raise TypeError(f"cannot resolve the annotations of {fn!r}: {exc}") from exc
    hint = hints.get(param.name)
    return None if hint in _UNTYPED else hint


def describe_validation_error(exc: msgspec.ValidationError) -> str:
    """msgspec names the field at fault, e.g. "Expected `str`, got `int` - at `$.text`"."""
    return str(exc)
