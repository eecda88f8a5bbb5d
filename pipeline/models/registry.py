"""Create models by name (timm's idea): configs name a model, registered builders make it.

A builder's keyword arguments are what a profile's `model_args` may hold; they are checked when the config loads
(`model_argument_problem`), so a typo stops the run before any stage instead of failing a builder after hours of
earlier stages. A builder that passes `**kwargs` on declares where they go (`kwargs_to`) and which of that
destination's arguments it sets itself (`sets`), so its arguments can still be told.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from pipeline.errors import ConfigError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_FORWARDS: dict[str, tuple[Callable[..., Any], frozenset[str]]] = {}  # name -> (where **kwargs go, what the builder sets there)


def register_model(name: str, kwargs_to: Callable[..., Any] | None = None,
                   sets: Iterable[str] = ()) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that makes a builder reachable from config by `name`; `kwargs_to` and `sets`: see the module docstring."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} registered twice")
        _BUILDERS[name] = builder
        if kwargs_to is not None:
            _FORWARDS[name] = (kwargs_to, frozenset(sets))
        return builder

    return decorate


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; unknown names list the ones that exist, unknown arguments the ones it takes, and a
    value the builder refuses (a TypeError or ValueError) is a one-line ConfigError naming the model and its arguments."""
    problem = model_argument_problem(name, kwargs)
    if problem is not None:
        raise ConfigError(problem[1])
    try:
        return _BUILDERS[name](**kwargs)
    except (TypeError, ValueError) as exc:
        arguments = ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
        raise ConfigError(f"model {name}({arguments}): {exc}") from None


def list_models() -> list[str]:
    _import_builtin_models()
    return sorted(_BUILDERS)


def keyword_names(function: Callable[..., Any]) -> tuple[set[str], bool]:
    """The names `function` takes by keyword, and whether it also takes any other (a **kwargs)."""
    parameters = inspect.signature(function).parameters.values()
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind == p.VAR_KEYWORD for p in parameters)


def accepted_keywords(function: Callable[..., Any], forwarded_to: Callable[..., Any] | None,
                      set_on_the_way: Iterable[str] = (), not_given: Iterable[str] = ()) -> list[str] | None:
    """What a caller may pass `function` by keyword, following its **kwargs into `forwarded_to` (minus what
    `function` sets there itself); None when that cannot be told (a **kwargs going nowhere known, or open-ended)."""
    names, takes_more = keyword_names(function)
    names -= set(not_given)
    if takes_more:
        if forwarded_to is None:
            return None
        forwarded, open_ended = keyword_names(forwarded_to)
        if open_ended:
            return None
        names |= forwarded - set(set_on_the_way)
    return sorted(names)


def model_arguments(name: str) -> list[str] | None:
    """The keyword arguments model `name` takes, or None when that cannot be told (a **kwargs going nowhere declared)."""
    _import_builtin_models()
    destination, set_by_builder = _FORWARDS.get(name, (None, frozenset()))
    return accepted_keywords(_BUILDERS[name], destination, set_by_builder)


def model_argument_problem(name: str, args: dict[str, Any]) -> tuple[str | None, str] | None:
    """(the offending argument, or None for the name itself; a one-line problem) for a model and its arguments."""
    _import_builtin_models()
    if name not in _BUILDERS:
        return None, f"unknown model {name!r}; registered: {', '.join(sorted(_BUILDERS))}"
    allowed = model_arguments(name)
    fixed = _FORWARDS.get(name, (None, frozenset()))[1]
    for key in args:  # e.g. a profile's {depth: 6} for vit_face_tiny meeting insightface_vit_t, whose depth is fixed
        if key in fixed:
            return key, (f"model {name} sets {key!r} itself (it is part of the architecture); drop it from model_args; "
                         f"it takes: {', '.join(allowed or []) or 'none'}")
    return unknown_argument(f"model {name}", args, allowed)


def unknown_argument(owner: str, given: Iterable[str], allowed: list[str] | None) -> tuple[str, str] | None:
    """The first name in `given` that is not in `allowed` (None: anything goes), with the closest allowed name."""
    if allowed is None:
        return None
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return key, f"{owner} takes no argument {key!r}{hint}; it takes: {', '.join(allowed) or 'none'}"
    return None


def _import_builtin_models() -> None:
    # Imported for their @register_model side effect.
    from pipeline.models import edgeface, iresnet, mobilefacenet, vit_teacher  # noqa: F401
