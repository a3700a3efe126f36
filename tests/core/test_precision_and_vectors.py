"""Precision resolution and the one L2 normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvh.core.jsonio import json_round_trip
from mvh.core.precision import autocast_dtype, resolve_precision
from mvh.core.vectors import l2_normalise
from mvh.errors import UsageError


def test_precision_on_cpu_is_float32_and_half_precision_is_refused() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32" and autocast_dtype("fp32") is None
    for half in ("bf16", "fp16"):
        with pytest.raises(UsageError, match="needs a CUDA device"):
            resolve_precision(half, cpu)
    with pytest.raises(UsageError, match="unknown precision 'int8'"):
        resolve_precision("int8", cpu)
    assert autocast_dtype("bf16") is torch.bfloat16 and autocast_dtype("fp16") is torch.float16


def test_l2_normalise_gives_unit_rows_and_keeps_zero_rows() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]], dtype=np.float64)
    got = l2_normalise(x)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]], rtol=1e-6)
    with pytest.raises(UsageError, match="2-d"):
        l2_normalise(np.zeros(3))


def test_the_json_round_trip_is_what_json_gives_back() -> None:
    assert json_round_trip({"a": (1, 2), 3: [4.5]}) == {"a": [1, 2], "3": [4.5]}
