"""Create models by name (timm's idea): configs name a model, registered builders make it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from pipeline.errors import ConfigError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that makes a builder reachable from config by `name`."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} registered twice")
        _BUILDERS[name] = builder
        return builder

    return decorate


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; unknown names list the ones that exist."""
    _import_builtin_models()
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model {name!r}; registered: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[name](**kwargs)


def list_models() -> list[str]:
    _import_builtin_models()
    return sorted(_BUILDERS)


def _import_builtin_models() -> None:
    # Imported for their @register_model side effect.
    from pipeline.models import edgeface, iresnet, mobilefacenet, vit_teacher  # noqa: F401
