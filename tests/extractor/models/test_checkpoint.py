"""The checkpoint adapter: wrappers, prefixes, file formats, strict errors naming keys, provenance."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import save_file

from mvh.errors import CheckpointError, WeightsRequiredError
from mvh.extractor.models import create_model, load_weights, require_weights


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("mv_hybrid_tiny").eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


def _dinov2_teacher(state_dict: dict, module_prefix: bool = False) -> dict:
    prefix = "module.backbone." if module_prefix else "backbone."
    teacher = {prefix + k: v.clone() for k, v in state_dict.items()}
    teacher["dino_head.mlp.0.weight"] = torch.randn(16, 64)
    teacher["ibot_head.last_layer.weight_g"] = torch.ones(32, 1)
    return {"teacher": teacher}


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd},
        lambda sd: {"model": sd, "epoch": 3},
        lambda sd: {"module." + k: v for k, v in sd.items()},
        lambda sd: {"encoder." + k: v for k, v in sd.items()},
        lambda sd: _dinov2_teacher(sd),
        lambda sd: _dinov2_teacher(sd, module_prefix=True),
    ],
    ids=["plain", "state_dict", "model", "module", "encoder", "teacher", "teacher-module"],
)
def test_wrapped_checkpoints_load_exactly(tmp_path, wrap):
    source, target = _tiny(1), _tiny(2)
    assert not _same_weights(source, target)
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(source.state_dict()), path)
    info = load_weights(target, path)
    assert _same_weights(source, target)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.n_tensors == len(source.state_dict())


def test_teacher_report_names_what_was_dropped(tmp_path):
    source, target = _tiny(1), _tiny(2)
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save(_dinov2_teacher(source.state_dict()), path)
    info = load_weights(target, path)
    assert info.wrapper == "teacher"
    assert info.stripped_prefixes == ("backbone.",)
    assert set(info.dropped_keys) == {"dino_head.mlp.0.weight", "ibot_head.last_layer.weight_g"}
    assert "dropped 2" in info.report() and "teacher" in info.report()


@pytest.mark.parametrize("suffix", [".safetensors", ".bin", ".pt"])
def test_file_formats_round_trip(tmp_path, suffix):
    source, target = _tiny(1), _tiny(2)
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    load_weights(target, path)
    assert _same_weights(source, target)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(source(x), target(x), rtol=0, atol=0)


def test_renamed_key_fails_naming_both_keys(tmp_path):
    state = _tiny(1).state_dict()
    state["blocks.blocks.0.mixer.A_log_renamed"] = state.pop("blocks.blocks.0.mixer.A_log")
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    target = _tiny(2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_weights(target, path)
    message = str(err.value)
    assert "missing 1 (blocks.blocks.0.mixer.A_log)" in message
    assert "unexpected 1 (blocks.blocks.0.mixer.A_log_renamed)" in message
    assert "mv_hybrid_tiny" in message and str(path) in message
    assert "\n" not in message
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # nothing partially loaded


def test_wrong_architecture_lists_shape_mismatches_and_counts(tmp_path):
    path = tmp_path / "big.pth"
    torch.save(create_model("mv_hybrid_tiny", embed_dim=32, num_heads=2).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_weights(_tiny(), path)
    message = str(err.value)
    assert "shape mismatches" in message and "cls_token [1, 1, 32] vs model [1, 1, 64]" in message
    assert "more)" in message  # first few shown, the rest counted


def test_unreadable_and_unsupported_files(tmp_path):
    bad = tmp_path / "junk.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_weights(_tiny(), bad)
    with pytest.raises(CheckpointError, match="unsupported checkpoint type"):
        other = tmp_path / "w.ckpt"
        other.write_bytes(b"x")
        load_weights(_tiny(), other)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_weights(_tiny(), tmp_path / "absent.pth")


def test_pickled_objects_are_refused_by_weights_only(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": _tiny().state_dict(), "args": _Args()}, path)
    with pytest.raises(CheckpointError, match="holds Python objects other than tensors") as err:
        load_weights(_tiny(), path)
    assert "weights_only=False" not in str(err.value)


class _Args:
    lr = 0.1


def test_weights_are_required_unless_random_init():
    with pytest.raises(WeightsRequiredError, match="--random-init"):
        require_weights("mv_hybrid", None, random_init=False)
    require_weights("mv_hybrid", None, random_init=True)
    require_weights("mv_hybrid", "w.pth", random_init=False)
    with pytest.raises(CheckpointError, match="not both"):
        require_weights("mv_hybrid", "w.pth", random_init=True)
    with pytest.raises(WeightsRequiredError):
        load_weights(_tiny(), None)


def test_full_dinov2_training_state_takes_the_teacher(tmp_path):
    teacher, student, target = _tiny(1), _tiny(3), _tiny(2)
    state = {f"teacher.backbone.{k}": v for k, v in teacher.state_dict().items()}
    state |= {f"student.backbone.{k}": v for k, v in student.state_dict().items()}
    state["teacher.dino_head.mlp.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / "model_0012499.rank_0.pth"
    torch.save({"model": state, "iteration": 12499}, path)
    info = load_weights(target, path)
    assert _same_weights(teacher, target)
    assert info.stripped_prefixes == ("teacher.", "backbone.")
    assert any(k.startswith("student.") for k in info.dropped_keys)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"hello world\n", "is a text file, not a checkpoint .it starts with 'hello world'"),
        (b"# my weights\nfoo: 1\n", "is a text file"),
        (b'{"a": 1}', "is a text file"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n", "Git LFS pointer"),
        (b"", "is empty"),
        (b"\x01\x02\x00\xff", "not a PyTorch checkpoint"),
        (b"PK\x03\x04broken", "cannot be read as a PyTorch checkpoint .*damaged or truncated"),
    ],
)
def test_files_that_are_not_checkpoints_fail_in_one_line(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as err:
        load_weights(_tiny(), path)
    text = str(err.value)
    assert "\n" not in text and "weights_only=False" not in text and "will likely succeed" not in text
    assert text.startswith(str(path))


def test_truncated_checkpoint_is_a_one_line_error(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save(_tiny().state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="damaged or truncated") as err:
        load_weights(_tiny(), path)
    assert "\n" not in str(err.value)


class _Payload:
    """Unpickling this would create `marker`: a stand-in for a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


def test_malicious_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="posix.mkdir|os.mkdir|refused unread") as err:
        load_weights(_tiny(), path)
    assert not marker.exists()
    assert "weights_only=False" not in str(err.value)
