"""Sharded-checkpoint reading (mvh.pretrain.fsdp) in one process: no pickled code runs, torn saves refused."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import Metadata

from mvh.errors import CheckpointError
from mvh.extractor.models import create_model
from mvh.pretrain.fsdp import backbone_blocks, check_metadata, load_sharded, read_latest

from .conftest import TINY_ARCH


class _Payload:
    """Unpickling this creates `marker`: proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _sharded_run(run_dir: Path, metadata: bytes) -> Path:
    folder = run_dir / "checkpoint_sharded" / "step_00000004"
    folder.mkdir(parents=True)
    (folder / ".metadata").write_bytes(metadata)
    latest = {"folder": folder.name, "step": 4, "world_size": 2, "config": {}}
    (run_dir / "checkpoint_sharded" / "latest.json").write_text(json.dumps(latest))
    return folder


def test_plain_dcp_metadata_is_accepted(tmp_path) -> None:
    _sharded_run(tmp_path, pickle.dumps(Metadata(state_dict_metadata={})))
    latest = read_latest(tmp_path)
    assert latest is not None and (latest["step"], latest["world_size"]) == (4, 2)


def test_metadata_carrying_code_is_refused_without_running_it(tmp_path) -> None:
    marker = tmp_path / "ran"
    _sharded_run(tmp_path, pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match=r"\.metadata: not the metadata of a sharded checkpoint"):
        read_latest(tmp_path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="not the metadata"):  # and a truncated one
        check_metadata(_sharded_run(tmp_path / "torn", pickle.dumps(Metadata(state_dict_metadata={}))[:20]))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")  # one process, on purpose
def test_non_tensor_values_carrying_code_are_refused_without_running_them(tmp_path) -> None:
    marker = tmp_path / "ran"
    good, evil = tmp_path / "good", tmp_path / "evil"
    # One process, no process group: DCP saves and loads locally.
    dcp.save({"w": torch.arange(4.0), "lr": 0.5}, storage_writer=dcp.FileSystemWriter(good))
    dcp.save({"w": torch.arange(4.0), "lr": _Payload(marker)}, storage_writer=dcp.FileSystemWriter(evil))
    assert not marker.exists()
    loaded = load_sharded({"w": torch.zeros(4), "lr": 0.0}, good)
    assert loaded["lr"] == 0.5 and torch.equal(loaded["w"], torch.arange(4.0))
    with pytest.raises(
        CheckpointError, match=r"cannot load the sharded checkpoint \(a value holds pickled code"
    ):
        load_sharded({"w": torch.zeros(4), "lr": 0.0}, evil)
    assert not marker.exists()


@pytest.mark.parametrize(("name", "overrides", "n_blocks"), [
    ("mv_hybrid_tiny", TINY_ARCH, TINY_ARCH["depth"]),
    ("vit_s24_dinov2", {"depth": 3, "embed_dim": 48, "num_heads": 2}, 3),
])  # fmt: skip
def test_every_backbone_block_is_an_fsdp_unit(name, overrides, n_blocks) -> None:
    with torch.device("meta"):
        backbone = create_model(name, **overrides)
    blocks = backbone_blocks(backbone)
    assert len(blocks) == n_blocks
    owned = {id(p) for block in blocks for p in block.parameters()}
    assert len(owned) == sum(1 for _ in backbone.blocks.parameters())  # the blocks hold every block weight
