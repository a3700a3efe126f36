"""The backbone registry: names -> builder functions and the metadata a user needs before building one."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from mvh.core.backbone import Backbone
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
    aliases: tuple[str, ...] = ()

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
            "aliases": list(self.aliases),
        }


@dataclass(frozen=True)
class _Entry:
    info: ModelInfo
    builder: Callable[..., nn.Module]
    arch: type[nn.Module]


_REGISTRY: dict[str, _Entry] = {}
_ALIASES: dict[str, str] = {}
# Settings that must be >= 1 (other integer settings, e.g. reg_tokens, may be 0).
_POSITIVE = frozenset(
    {"depth", "embed_dim", "num_heads", "patch_size", "d_state", "d_conv", "expand", "img_size", "mlp_ratio"}
)


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


def register_alias(alias: str, name: str) -> None:
    """Accept `alias` (another tool's name for the same weights, e.g. TRIDENT's) for backbone `name`."""
    if alias in _REGISTRY or alias in _ALIASES:
        raise ValueError(f"backbone alias {alias!r} is already taken")
    entry = _entry(name)
    _ALIASES[alias] = name
    info = entry.info
    updated = ModelInfo(**{**info.__dict__, "aliases": (*info.aliases, alias)})
    _REGISTRY[name] = _Entry(info=updated, builder=entry.builder, arch=entry.arch)


def canonical_name(name: str) -> str:
    """The registry name of `name` (itself, or the backbone an alias stands for)."""
    return _ALIASES.get(name, name)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[canonical_name(name)]
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
        raise UsageError(
            f"--overrides: backbone {name!r} has no setting {', '.join(unknown)}; settings: {allowed}"
        )


def _expectation(key: str, default: Any) -> tuple[type | tuple[type, ...], str] | None:
    if isinstance(default, bool):
        return bool, "true or false"
    positive = key in _POSITIVE
    if isinstance(default, int):
        return int, "an integer >= 1" if positive else "an integer >= 0"
    if isinstance(default, float):
        return (int, float), "a number > 0" if positive else "a number >= 0"
    if isinstance(default, str):
        return str, "a string"
    return None


def _check_values(
    name: str, arch: type[nn.Module], defaults: dict[str, Any], overrides: dict[str, Any]
) -> None:
    params = inspect.signature(arch.__init__).parameters
    for key, value in overrides.items():
        default = defaults.get(key, params[key].default if key in params else None)
        expected = _expectation(key, default)
        if expected is None:
            continue
        kinds, text = expected
        ok = isinstance(value, kinds) and (isinstance(value, bool) == isinstance(default, bool))
        if ok and isinstance(value, (int, float)) and not isinstance(value, bool):
            ok = math.isfinite(value) and (value > 0 if key in _POSITIVE else value >= 0)
        if not ok:
            raise UsageError(
                f"--overrides {key}={value!r}: backbone {name!r} needs {text} for {key}, e.g. {key}={default}"
            )


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered backbone `name` (or alias) with architecture `overrides`; never downloads."""
    entry = _entry(name)
    name = entry.info.name
    _check_overrides(name, entry.arch, overrides)
    _check_values(name, entry.arch, entry.info.default_config, overrides)
    try:
        model = entry.builder(**overrides)
    except (ValueError, AssertionError, TypeError, RuntimeError) as exc:
        if not overrides:
            raise
        given = ",".join(f"{k}={v}" for k, v in overrides.items())
        raise UsageError(f"--overrides {given}: backbone {name!r} cannot be built with them ({exc})") from exc
    if not isinstance(model, Backbone):  # a registration error, not a user's
        raise TypeError(f"backbone {name!r} ({type(model).__name__}) is not a mvh.core.backbone.Backbone")
    model.model_name = name
    return model


def get_model_info(name: str) -> ModelInfo:
    """Metadata of the registered backbone `name` (ModelNotFoundError lists the known names)."""
    return _entry(name).info


def list_aliases() -> dict[str, str]:
    """Every alias and the registry name it stands for."""
    return dict(sorted(_ALIASES.items()))


def list_models() -> list[ModelInfo]:
    """Metadata of every registered backbone, sorted by name."""
    return [_REGISTRY[name].info for name in sorted(_REGISTRY)]
