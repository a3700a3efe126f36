"""FSDP for `mvh pretrain --fsdp`: the student/teacher sharding and its sharded training checkpoints.

Sharding follows the MV_Hybrid authors' DINOv2 setup (`dinov2/fsdp/__init__.py`, `ssl_meta_arch.py` and
`Train_MVHybrid.yaml` of chokevin8/MVHybrid): the student's and the teacher's backbone, DINO head and iBOT
head are each fully sharded on their own (FULL_SHARD, parameters in float32), the teacher is resharded
right after its forward pass and its EMA is computed on the local shards. We use torch's FSDP2
(`fully_shard`), which also runs on CPU with gloo, and shard each backbone block as its own unit (DINOv2's
`BlockChunk` units); gradients are reduced in float32 (the authors reduce in float16), so a sharded run
computes what the DDP and single-process runs compute.

Training state: `torch.distributed.checkpoint` (DCP) writes RUN_DIR/checkpoint_sharded/step_NNNNNNNN/ (one
`__R_0.distcp` file per rank plus `.metadata`): every rank writes its own shards, as DCP does. Rank 0 then
points RUN_DIR/checkpoint_sharded/latest.json at it (step, world size, trajectory settings) and removes the
older step folders, so an interrupted save leaves the previous checkpoint in force. The consumable
teacher_checkpoint.pth is gathered to full tensors and written by rank 0 alone.

Reading a sharded checkpoint never runs pickled code: `.metadata` is unpickled with an allow-list of
DCP's own metadata classes, and DCP's non-tensor values (optimiser hyper-parameters, RNG states) are
checked with `torch.load(weights_only=True)` before DCP reads them (DCP itself unpickles them freely).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mvh.errors import CheckpointError, UsageError

SHARDED_DIR = "checkpoint_sharded"
LATEST = "latest.json"


def check_fsdp_launch(device: torch.device) -> None:
    """Refuse `--fsdp` where it cannot run: outside torchrun, or on a device without FSDP collectives."""
    if "LOCAL_RANK" not in os.environ:
        raise UsageError(
            "--fsdp: needs torchrun (`torchrun --nproc-per-node N -m mvh pretrain ... --fsdp`); "
            "for one process drop --fsdp"
        )
    if device.type not in ("cuda", "cpu"):
        raise UsageError(
            f"--fsdp: runs on cuda or cpu, not {device.type}; pass --device cuda or --device cpu"
        )


def backbone_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's residual blocks (MV_Hybrid's `blocks.blocks`, a ViT's `blocks`), each an FSDP unit."""
    blocks = getattr(backbone, "blocks", None)
    inner = getattr(blocks, "blocks", blocks)
    return list(inner) if isinstance(inner, (nn.ModuleList, nn.Sequential)) else []


def shard_network(network: nn.Module, mesh: Any, *, reshard_after_forward: bool | None = None) -> None:
    """Shard an SSLNetwork in place: each backbone block, then backbone, DINO head, iBOT head (one root each).

    `reshard_after_forward=True` (the teacher's) frees the gathered parameters after every forward pass,
    roots included; the default keeps a root's gathered for the backward pass that follows (the student's).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    policy = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    for block in backbone_blocks(network.backbone):
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    for part in (network.backbone, network.dino_head, network.ibot_head):
        fully_shard(part, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    # The network calls `backbone.forward_features`, not `forward`: FSDP must gather around it too.
    register_fsdp_forward_method(network.backbone, "forward_features")


@contextlib.contextmanager
def quiet_view_outputs() -> Iterator[None]:
    """Silence FSDP2's warning that a sharded module returned a view (`x_norm_clstoken` is a slice).

    The warning is about in-place writes into such views, which would skip a gather; the network never
    writes into its outputs, and the FSDP-equals-DDP test checks the resulting gradients step by step.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        yield


def device_mesh(device: torch.device, world_size: int) -> Any:
    """The 1-D mesh of all ranks on `device`'s type (FULL_SHARD over the whole world)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world_size,))


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (a collective), or the tensor itself."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def sharded_state(
    student: nn.Module, teacher: nn.Module, optimizer: torch.optim.Optimizer, rank: int, extra: dict[str, Any]
) -> dict[str, Any]:
    """The DCP state of a sharded run: model/teacher/optimiser shards, `extra` and this rank's RNG states."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    from mvh.pretrain.checkpoint import rng_state

    return {
        "student": get_model_state_dict(student),
        "teacher": get_model_state_dict(teacher),
        "optimizer": get_optimizer_state_dict(student, optimizer),
        **extra,
        f"rng_rank{rank}": rng_state(),
    }


def load_sharded_into(
    student: nn.Module, teacher: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Put the model, teacher and optimiser parts of a loaded `sharded_state` back into the live objects."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(student, state["student"])
    set_model_state_dict(teacher, state["teacher"])
    set_optimizer_state_dict(student, optimizer, state["optimizer"])


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Gather a sharded module's full state dict on CPU (a collective); rank 0 gets it, others get {}."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_sharded(
    state: dict[str, Any], run_dir: Path, step: int, world_size: int, trajectory: dict[str, Any], main: bool
) -> Path:
    """Every rank writes its shards of `state` with DCP; rank 0 then moves latest.json to them."""
    import torch.distributed.checkpoint as dcp

    root = run_dir / SHARDED_DIR
    folder = root / f"step_{step:08d}"
    # DCP returns on every rank only after rank 0 has written `.metadata`: the folder is complete here.
    dcp.save(state, storage_writer=dcp.FileSystemWriter(folder, overwrite=True))
    if main:
        latest = {"folder": folder.name, "step": step, "world_size": world_size, "config": trajectory}
        tmp = root / (LATEST + ".tmp")
        tmp.write_text(json.dumps(latest))
        os.replace(tmp, root / LATEST)
        for old in root.glob("step_*"):
            if old.name != folder.name:
                shutil.rmtree(old)
    return folder


_METADATA_MODULES = ("torch.distributed.checkpoint.metadata",)
_METADATA_NAMES = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's `.metadata` (its dataclasses, torch dtypes and sizes) and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if module in _METADATA_MODULES or (module, name) in _METADATA_NAMES or dtype:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of DCP metadata")


def check_metadata(folder: Path) -> None:
    """Refuse a DCP folder whose `.metadata` is not plain DCP metadata (e.g. carries pickled code)."""
    path = folder / ".metadata"
    try:
        with open(path, "rb") as fh:
            _MetadataUnpickler(fh).load()
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not the metadata of a sharded checkpoint written by `mvh pretrain` ({exc}); "
            "start without --resume"
        ) from exc


def _weights_only_planner() -> Any:
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class WeightsOnlyLoadPlanner(DefaultLoadPlanner):
        """DCP's default load planner; a non-tensor value must load with `weights_only=True` first."""

        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            torch.load(value, weights_only=True)  # raises on pickled code before DCP unpickles it
            value.seek(0)
            super().load_bytes(read_item, value)

    return WeightsOnlyLoadPlanner()


def read_latest(run_dir: Path) -> dict[str, Any] | None:
    """RUN_DIR/checkpoint_sharded/latest.json of a sharded run, or None where there is none."""
    path = run_dir / SHARDED_DIR / LATEST
    if not path.exists():
        return None
    try:
        latest = json.loads(path.read_text())
        folder = path.parent / latest["folder"]
        step, world_size, config = int(latest["step"]), int(latest["world_size"]), dict(latest["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc}); start without --resume") from exc
    if not (folder / ".metadata").exists():
        raise CheckpointError(
            f"{folder}: sharded checkpoint incomplete (no .metadata); start without --resume"
        )
    check_metadata(folder)
    return {"folder": folder, "step": step, "world_size": world_size, "config": config, "path": path}


def _failure(exc: BaseException) -> str:
    """One line saying why DCP failed: the first rank's own exception, not DCP's multi-rank report."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        first = next(iter(failures.values()))
        exc = first[0] if isinstance(first, tuple) else first
    if isinstance(exc, pickle.UnpicklingError):
        return "a value holds pickled code or objects other than plain data; refused"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def load_sharded(state: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Fill the template `state` (from `sharded_state`) in place from the DCP folder; return it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        dcp.load(state, storage_reader=dcp.FileSystemReader(folder), planner=_weights_only_planner())
    except (CheckpointException, Exception) as exc:  # DCP's exception derives from BaseException
        raise CheckpointError(
            f"{folder}: cannot load the sharded checkpoint ({_failure(exc)}); start without --resume"
        ) from exc
    return state
