"""Embedder: weights policy, seeded random init, determinism across batches, fingerprint rebuild."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mvh.core.precision import resolve_precision
from mvh.errors import CheckpointError, FingerprintMismatchError, UsageError, WeightsRequiredError
from mvh.extractor.embedder import Embedder

MODEL = "mv_hybrid_tiny"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(MODEL, random_init=True, device="cpu", seed=0)


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(3, 224, 224, 3), dtype=np.uint8)


def test_weights_required_unless_random_init() -> None:
    with pytest.raises(WeightsRequiredError, match="--random-init"):
        Embedder(MODEL, device="cpu")


def test_properties_and_fingerprint(embedder) -> None:
    assert embedder.dim == 128 and embedder.tile_px == 224 and embedder.weights_sha256 == "random-init"
    assert embedder.precision == "fp32" and embedder.device.type == "cpu"
    fp = embedder.fingerprint(0.5, 224, "float16")
    assert (fp.model, fp.embed_dim, fp.mpp, fp.tile_px, fp.embedding_dtype) == (
        MODEL,
        128,
        0.5,
        224,
        "float16",
    )
    assert fp.model_config["embed_dim"] == 64 and fp.mean == embedder.mean


def test_same_tile_same_embedding_in_a_batch_and_alone(embedder, tiles) -> None:
    batch = embedder.embed_images(tiles)
    assert batch.shape == (3, 128) and batch.dtype == np.float32 and np.isfinite(batch).all()
    for i in (0, 2):
        alone = embedder.embed_images(tiles[i : i + 1])
        np.testing.assert_allclose(alone[0], batch[i], atol=1e-5, rtol=0)
    assert not np.allclose(batch[0], batch[1])


def test_preprocessing_matches_an_independent_normalisation(embedder, tiles) -> None:
    x = torch.from_numpy(tiles[:2]).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(embedder.mean).view(1, 3, 1, 1)
    std = torch.tensor(embedder.std).view(1, 3, 1, 1)
    want = embedder.embed_tensor((x - mean) / std)
    np.testing.assert_allclose(embedder.embed_images(tiles[:2]), want, atol=1e-5, rtol=0)


def test_other_sizes_are_resized(embedder, tiles) -> None:
    small = tiles[:2, ::2, ::2]
    assert embedder.embed_images(small).shape == (2, 128)
    mixed = embedder.embed_images([tiles[0], small[1]])
    np.testing.assert_allclose(mixed[0], embedder.embed_images(tiles[:1])[0], atol=1e-5, rtol=0)


def test_random_init_is_seeded_and_rebuilt_from_fingerprint(embedder, tiles) -> None:
    torch.manual_seed(123)  # the global RNG must not matter
    again = Embedder(MODEL, random_init=True, device="cpu", seed=0)
    np.testing.assert_array_equal(again.embed_images(tiles[:2]), embedder.embed_images(tiles[:2]))
    other = Embedder(MODEL, random_init=True, device="cpu", seed=1)
    assert not np.allclose(other.embed_images(tiles[:1]), embedder.embed_images(tiles[:1]))
    rebuilt = Embedder.from_fingerprint(embedder.fingerprint(0.5, 224), device="cpu")
    np.testing.assert_array_equal(rebuilt.embed_images(tiles[:2]), embedder.embed_images(tiles[:2]))


def test_overrides_recorded_and_rebuilt(tiles) -> None:
    small = Embedder(MODEL, random_init=True, overrides={"embed_dim": 32}, device="cpu")
    assert small.dim == 64 and small.model_config["embed_dim"] == 32
    rebuilt = Embedder.from_fingerprint(small.fingerprint(0.5, 224), device="cpu")
    np.testing.assert_array_equal(rebuilt.embed_images(tiles[:1]), small.embed_images(tiles[:1]))


def test_weights_file_sha256_recorded_and_checked(embedder, tiles, tmp_path) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save(embedder.model.state_dict(), path)
    loaded = Embedder(MODEL, weights=path, device="cpu", seed=5)
    assert loaded.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    np.testing.assert_array_equal(loaded.embed_images(tiles[:2]), embedder.embed_images(tiles[:2]))
    fp = loaded.fingerprint(0.5, 224)
    assert Embedder.from_fingerprint(fp, device="cpu").weights_sha256 == fp.weights_sha256
    other = tmp_path / "other.pth"
    torch.save(Embedder(MODEL, random_init=True, device="cpu", seed=9).model.state_dict(), other)
    with pytest.raises(FingerprintMismatchError, match="differ"):
        Embedder.from_fingerprint(fp, weights=other, device="cpu")
    with pytest.raises(CheckpointError, match="not there"):
        Embedder.from_fingerprint(fp, weights=tmp_path / "gone.pth", device="cpu")
    with pytest.raises(CheckpointError, match="not both"):
        Embedder(MODEL, weights=path, random_init=True, device="cpu")


def test_precision_policy() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    with pytest.raises(UsageError, match="CUDA"):
        resolve_precision("bf16", cpu)
    with pytest.raises(UsageError, match="unknown precision"):
        resolve_precision("int8", cpu)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA"):
            Embedder(MODEL, random_init=True, device="cuda")


@pytest.mark.parametrize("size", [224, 200])
def test_normalise_is_the_channel_broadcast_bit_for_bit(size: int) -> None:
    embedder = Embedder("vit_dinov2_tiny", random_init=True, device="cpu")
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, size, size, 3), dtype=torch.uint8, generator=generator)
    # The formula before the row-wise rewrite: permute, scale, resize if needed, broadcast [1, 3, 1, 1].
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    if size != embedder.tile_px:
        x = F.interpolate(x, size=(embedder.tile_px,) * 2, mode="bilinear", antialias=True)
    mean = torch.tensor(embedder.mean).view(1, 3, 1, 1)
    std = torch.tensor(embedder.std).view(1, 3, 1, 1)
    want = (x - mean) / std
    got = embedder.normalise(images)
    assert torch.equal(got, want) and got.stride() == want.stride()  # values and channels-last layout


def test_weights_are_named_by_file_name_and_found_on_this_machine(embedder, tiles, tmp_path, monkeypatch):
    # Before: the fingerprint kept the absolute path, which every shared store, info and export showed.
    import dataclasses
    import json

    monkeypatch.setenv("MVH_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "private" / "teacher.pth"
    path.parent.mkdir()
    torch.save(embedder.model.state_dict(), path)
    fp = Embedder(MODEL, weights=path, device="cpu").fingerprint(0.5, 224)
    assert fp.weights_path == "teacher.pth" and str(tmp_path) not in json.dumps(fp.to_dict())
    rebuilt = Embedder.from_fingerprint(fp, device="cpu")  # this machine recorded where the file is
    np.testing.assert_array_equal(rebuilt.embed_images(tiles[:1]), embedder.embed_images(tiles[:1]))
    monkeypatch.setenv("MVH_CACHE_DIR", str(tmp_path / "another_machine"))
    with pytest.raises(CheckpointError, match=r"^teacher.pth: .*\(teacher.pth, sha256 .*--weights FILE$"):
        Embedder.from_fingerprint(fp, device="cpu")
    assert Embedder.from_fingerprint(fp, weights=path, device="cpu").weights_sha256 == fp.weights_sha256
    older = dataclasses.replace(fp, weights_path=str(path))  # a store made before keeps finding its file
    assert Embedder.from_fingerprint(older, device="cpu").weights_sha256 == fp.weights_sha256
