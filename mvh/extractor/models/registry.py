"""The backbone registry: names -> builder functions and the metadata a user needs before building one."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from mvh.errors import ModelNotFoundError, UsageError

F = TypeVar("F", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelInfo:
    """What a registered backbone is: dims, preprocessing, expected magnification and weights source."""

    name: str
    output_dim: int
    embed_dim: int
    tile_px: int
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mpp: float
    weights_source: str
    description: str
    default_config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view (for `mvh models --json`)."""
        return {
            "name": self.name,
            "output_dim": self.output_dim,
            "embed_dim": self.embed_dim,
            "tile_px": self.tile_px,
            "patch_size": self.patch_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "mpp": self.mpp,
            "weights_source": self.weights_source,
            "description": self.description,
            "default_config": dict(self.default_config),
        }


@dataclass(frozen=True)
class _Entry:
    info: ModelInfo
    builder: Callable[..., nn.Module]
    arch: type[nn.Module]


_REGISTRY: dict[str, _Entry] = {}


def register_model(info: ModelInfo, arch: type[nn.Module]) -> Callable[[F], F]:
    """Decorator registering a builder `fn(**overrides) -> nn.Module` under `info.name` (once only)."""

    def decorator(fn: F) -> F:
        if info.name in _REGISTRY:
            raise ValueError(f"backbone {info.name!r} is registered twice (second time by {fn.__module__})")
        if fn.__name__ != info.name:
            raise ValueError(f"builder {fn.__name__!r} must carry its registry name {info.name!r}")
        _REGISTRY[info.name] = _Entry(info=info, builder=fn, arch=arch)
        return fn

    return decorator


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ModelNotFoundError(
            f"unknown backbone {name!r}; choose one of: {known} (see `mvh models`)"
        ) from None


def _check_overrides(name: str, arch: type[nn.Module], overrides: dict[str, Any]) -> None:
    params = inspect.signature(arch.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(overrides) - set(params) - {"self"})
    if unknown:
        allowed = ", ".join(p for p in params if p != "self")
        raise UsageError(f"backbone {name!r} has no setting {', '.join(unknown)}; settings: {allowed}")


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered backbone `name` with architecture `overrides`; never downloads weights."""
    entry = _entry(name)
    _check_overrides(name, entry.arch, overrides)
    model = entry.builder(**overrides)
    model.model_name = name
    return model


def get_model_info(name: str) -> ModelInfo:
    """Metadata of the registered backbone `name` (ModelNotFoundError lists the known names)."""
    return _entry(name).info


def list_models() -> list[ModelInfo]:
    """Metadata of every registered backbone, sorted by name."""
    return [_REGISTRY[name].info for name in sorted(_REGISTRY)]
