"""The one checkpoint adapter: read a file, unwrap it, adapt its keys, load it STRICTLY, report it."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from torch import Tensor, nn

from mvh.core.backbone import Backbone
from mvh.core.files import sha256_file
from mvh.errors import CheckpointError, WeightsRequiredError

SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
WRAPPER_KEYS = ("teacher", "state_dict", "model")
STRIP_PREFIXES = ("module.", "backbone.", "encoder.")
_SHOW = 5


@dataclass(frozen=True)
class WeightsInfo:
    """Provenance of loaded weights: file, sha256, and how its keys were adapted to the model."""

    path: Path
    sha256: str
    n_tensors: int
    wrapper: str | None
    stripped_prefixes: tuple[str, ...]
    dropped_keys: tuple[str, ...]
    adaptations: tuple[str, ...]

    def report(self) -> str:
        """One line: what the adapter did to the checkpoint's keys."""
        parts = [f"{self.n_tensors} tensors loaded strictly from {self.path.name}"]
        if self.wrapper:
            parts.append(f"unwrapped {self.wrapper!r}")
        if self.stripped_prefixes:
            parts.append("stripped " + ", ".join(repr(p) for p in self.stripped_prefixes))
        if self.dropped_keys:
            parts.append(f"dropped {_summary(self.dropped_keys)}")
        parts.extend(self.adaptations)
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view."""
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "n_tensors": self.n_tensors,
            "wrapper": self.wrapper,
            "stripped_prefixes": list(self.stripped_prefixes),
            "dropped_keys": list(self.dropped_keys),
            "adaptations": list(self.adaptations),
        }


def _summary(keys: list[str] | tuple[str, ...]) -> str:
    shown = ", ".join(keys[:_SHOW])
    more = f", ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return f"{len(keys)} ({shown}{more})"


def read_checkpoint(path: Path) -> Any:
    """The raw object stored in a .pth/.pt/.bin (torch.load, weights_only) or .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no such checkpoint file; give the path of a {'/'.join(SUFFIXES)} file"
        )
    if path.suffix not in SUFFIXES:
        raise CheckpointError(
            f"{path}: unsupported checkpoint type {path.suffix!r}; use one of {', '.join(SUFFIXES)}"
        )
    if path.suffix == ".safetensors":
        try:
            return load_safetensors(str(path), device="cpu")
        except SafetensorError as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc}); re-save it") from exc
    return load_torch_file(path)


_LOAD_ERRORS = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    ValueError,
    AttributeError,
    KeyError,
    IndexError,
    TypeError,
    UnicodeDecodeError,
)


def _not_a_torch_file(path: Path) -> str | None:
    """Why `path` cannot be a torch.save file (judged from its first bytes), or None when it may be one."""
    with open(path, "rb") as fh:
        head = fh.read(256)
    if not head:
        return "is empty"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return None  # torch.save's zip format, or the legacy pickle format
    if head.startswith(b"version https://git-lfs"):
        return "is a Git LFS pointer, not the weights (run `git lfs pull` to fetch the file)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "is not a PyTorch checkpoint (neither torch.save's zip format nor a pickle)"
    if "\x00" in text:
        return "is not a PyTorch checkpoint (neither torch.save's zip format nor a pickle)"
    first = text.strip().splitlines()[0][:40] if text.strip() else ""
    return f"is a text file, not a checkpoint (it starts with {first!r})"


def _unpickler_reason(exc: BaseException) -> str:
    """The informative sentence of torch.load's error, without its advice to load with weights_only=False."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [
        line
        for line in lines
        if "weights_only" not in line and not line.startswith("Check the documentation of torch.load")
    ]
    if not useful:
        return type(exc).__name__
    first = useful[0].removeprefix("WeightsUnpickler error:").strip()
    return first.split(". ")[0].rstrip(".")


def load_torch_file(path: Path) -> Any:
    """`torch.load(path, weights_only=True)` on CPU; CheckpointError (one line, no traceback) otherwise.

    A pickle that needs anything but tensors and plain Python values is refused by torch's restricted
    unpickler before any of its code runs; the message never suggests `weights_only=False`.
    """
    path = Path(path)
    why = _not_a_torch_file(path)
    if why is not None:
        raise CheckpointError(f"{path}: {why}; give the checkpoint file itself")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: holds Python objects other than tensors ({_unpickler_reason(exc)}), refused unread; "
            "re-save only its state dict (torch.save(model.state_dict(), path)) or convert it to .safetensors"
        ) from exc
    except _LOAD_ERRORS as exc:
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch checkpoint ({_unpickler_reason(exc)}); the file is damaged "
            "or truncated: copy it again, or re-save its state dict"
        ) from exc


def unwrap_state_dict(obj: Any, path: Path) -> tuple[dict[str, Tensor], str | None, list[str], list[str]]:
    """Generic unwrapping: (state dict, wrapper key, stripped prefixes, dropped keys)."""
    wrapper = None
    while isinstance(obj, Mapping):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            break
        wrapper = key if wrapper is None else f"{wrapper}.{key}"
        obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{path}: holds no state dict (expected a dict of tensors); re-save the model's state dict"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if len(tensors) != len(obj):
        others = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
        raise CheckpointError(
            f"{path}: entries that are not tensors: {_summary(others)}; save a plain state dict"
        )
    stripped: list[str] = []
    dropped: list[str] = []
    if any(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
        stripped.append("module.")
    for keep in ("teacher.", "backbone."):
        # DINOv2 outputs: the teacher of a full training state, the backbone of a teacher (heads dropped).
        if any(k.startswith(keep) for k in tensors):
            dropped.extend(k for k in tensors if not k.startswith(keep))
            tensors = {k.removeprefix(keep): v for k, v in tensors.items() if k.startswith(keep)}
            stripped.append(keep)
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in tensors):
                tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}
                stripped.append(prefix)
                changed = True
    return tensors, wrapper, stripped, dropped


def _mismatch_message(model: nn.Module, path: Path, state_dict: Mapping[str, Tensor]) -> str | None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {list(state_dict[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if not (missing or unexpected or shapes):
        return None
    problems = []
    if missing:
        problems.append(f"missing {_summary(missing)}")
    if unexpected:
        problems.append(f"unexpected {_summary(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches {_summary(shapes)}")
    name = getattr(model, "model_name", type(model).__name__)
    return (
        f"{path}: checkpoint does not fit backbone {name!r}: {'; '.join(problems)}; "
        "choose the --model (and overrides) the checkpoint was trained with"
    )


def load_weights(model: nn.Module, path: Path | str | None) -> WeightsInfo:
    """Load a checkpoint into `model` strictly after adapting its keys (CheckpointError on any mismatch)."""
    if path is None:
        name = getattr(model, "model_name", type(model).__name__)
        raise WeightsRequiredError(
            f"no weights given for backbone {name!r}; pass --weights FILE (or --random-init)"
        )
    path = Path(path)
    raw = read_checkpoint(path)
    state_dict, wrapper, stripped, dropped = unwrap_state_dict(raw, path)
    if not isinstance(model, Backbone):
        raise TypeError(f"{type(model).__name__} is not a Backbone (mvh.core.backbone): no adapt_state_dict")
    state_dict, adaptations = model.adapt_state_dict(state_dict)
    message = _mismatch_message(model, path, state_dict)
    if message is not None:
        raise CheckpointError(message)
    model.load_state_dict(state_dict, strict=True)
    return WeightsInfo(
        path=path.resolve(),
        sha256=sha256_file(path),
        n_tensors=len(state_dict),
        wrapper=wrapper,
        stripped_prefixes=tuple(stripped),
        dropped_keys=tuple(dropped),
        adaptations=tuple(adaptations),
    )


def require_weights(model_name: str, weights: Path | str | None, random_init: bool) -> None:
    """Refuse to run without weights unless random initialisation was asked for explicitly."""
    if weights is None and not random_init:
        raise WeightsRequiredError(
            f"backbone {model_name!r} needs weights: pass --weights FILE, or --random-init to embed with "
            "random weights (recorded as 'random-init')"
        )
    if weights is not None and random_init:
        raise CheckpointError(f"{weights}: give either --weights or --random-init, not both")
