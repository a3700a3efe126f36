"""Selective scan: ours against the plain per-token recurrence (outputs and gradients), dtypes, dispatch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mvh.extractor.models import ssm
from mvh.extractor.models.ssm import selective_scan, selective_scan_torch


def scan_oracle(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """The recurrence of the spec, token by token (float32)."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    return y if D is None else y + u * D[:, None]


def _inputs(batch=2, dim=6, length=37, n_state=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(batch, dim, length, generator=g),
        delta=torch.randn(batch, dim, length, generator=g) * 0.5,
        A=-torch.exp(torch.randn(dim, n_state, generator=g)),
        B=torch.randn(batch, n_state, length, generator=g),
        C=torch.randn(batch, n_state, length, generator=g),
        D=torch.randn(dim, generator=g),
        delta_bias=torch.randn(dim, generator=g) * 0.3,
    )


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
@pytest.mark.parametrize("softplus", [True, False])
def test_forward_and_gradients_match_the_recurrence(chunk, softplus):
    inputs = _inputs()
    if not softplus:
        # without softplus the time step delta + delta_bias must be positive
        inputs["delta"], inputs["delta_bias"] = inputs["delta"].abs(), inputs["delta_bias"].abs()
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    oracle = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    y = selective_scan_torch(**leaves, delta_softplus=softplus, chunk=chunk)
    y_ref = scan_oracle(**oracle, delta_softplus=softplus)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    (y_ref * weights).sum().backward()
    for name in inputs:
        torch.testing.assert_close(leaves[name].grad, oracle[name].grad, rtol=1e-4, atol=1e-4, msg=name)


def test_optional_arguments_are_optional():
    x = _inputs(length=20)
    y = selective_scan_torch(x["u"], x["delta"].abs(), x["A"], x["B"], x["C"])
    torch.testing.assert_close(
        y, scan_oracle(x["u"], x["delta"].abs(), x["A"], x["B"], x["C"]), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_computes_in_float32_and_returns_the_input_dtype(dtype):
    x = _inputs(length=24)
    low = {k: v.to(dtype) for k, v in x.items()}
    y = selective_scan(**low, delta_softplus=True)
    assert y.dtype == dtype
    expected = scan_oracle(**{k: v.float() for k, v in low.items()}, delta_softplus=True)
    tol = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float64: 1e-5}[dtype]
    torch.testing.assert_close(y.float(), expected, rtol=tol, atol=tol)


def test_long_sequences_with_strong_decay_stay_finite():
    x = _inputs(length=300, n_state=16, dim=4)
    x["A"] = -torch.linspace(1, 200, 16).repeat(4, 1)
    x["delta"] = x["delta"].abs() * 20
    y = selective_scan_torch(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"])
    assert torch.isfinite(y).all()
    torch.testing.assert_close(
        y, scan_oracle(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"]), rtol=1e-4, atol=1e-5
    )


def test_cpu_tensors_never_take_the_cuda_kernel(monkeypatch):
    def kernel(*args, **kwargs):
        raise AssertionError("the CUDA kernel must not run on CPU tensors")

    monkeypatch.setattr(ssm, "mamba_selective_scan_fn", lambda: kernel)
    x = _inputs(length=10)
    torch.testing.assert_close(selective_scan(**x), scan_oracle(**x), rtol=1e-4, atol=1e-5)


def test_kernel_is_called_with_the_mamba_ssm_api():
    calls = []

    def fake_selective_scan_fn(
        u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
    ):
        calls.append(
            dict(z=z, return_last_state=return_last_state, dtypes=(A.dtype, D.dtype, delta_bias.dtype))
        )
        return scan_oracle(u, delta, A, B, C, D, delta_bias, delta_softplus)

    x = _inputs(length=12)
    y = ssm.selective_scan_cuda(fake_selective_scan_fn, **x, delta_softplus=True)
    torch.testing.assert_close(y, selective_scan_torch(**x, delta_softplus=True), rtol=1e-4, atol=1e-5)
    assert calls == [dict(z=None, return_last_state=False, dtypes=(torch.float32,) * 3)]


def test_missing_mamba_ssm_is_detected_not_raised():
    ssm.mamba_selective_scan_fn.cache_clear()
    try:
        import mamba_ssm  # noqa: F401
    except Exception:
        assert ssm.mamba_selective_scan_fn() is None
    else:
        assert callable(ssm.mamba_selective_scan_fn())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernel_matches_ours():
    kernel = ssm.mamba_selective_scan_fn()
    if kernel is None:
        pytest.skip("mamba_ssm is not installed")
    x = {k: v.cuda() for k, v in _inputs(batch=4, dim=64, length=197, n_state=16).items()}
    torch.testing.assert_close(
        selective_scan(**x, delta_softplus=True),
        selective_scan_torch(**x, delta_softplus=True),
        rtol=1e-3,
        atol=1e-3,
    )
