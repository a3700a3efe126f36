"""The fused-scan dispatch under autocast: a dtype-strict stand-in for mamba_ssm's kernel, whole model.

mamba_ssm's `selective_scan_fn` casts nothing; its C++ entry (csrc/selective_scan/selective_scan.cpp,
`selective_scan_fwd` / `selective_scan_bwd`) checks: u float32/float16/bfloat16; A float32; delta, and
B and C when they vary per token, of u's dtype; D and delta_bias float32; z of u's dtype; in backward,
dout of u's dtype. Under autocast, MV_Hybrid's mixer makes u float32 (the conv weights are float32) while
x_proj/dt_proj give bfloat16 delta, B, C: the real kernel raises. `fake_kernel` raises exactly as it does.
"""

from __future__ import annotations

import pytest
import torch

from mvh.extractor.models import create_model, ssm

INPUT_TYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeError(f"selective_scan dtype check failed: {what}")


def fake_kernel(calls: list):
    """A `selective_scan_fn` with the kernel's dtype checks (forward and backward), computing with ours."""

    def selective_scan_fn(
        u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
    ):
        input_type = u.dtype
        _check(input_type in INPUT_TYPES, f"u is {input_type}")
        _check(A.dtype == torch.float32, f"A is {A.dtype}")
        _check(delta.dtype == input_type, f"delta {delta.dtype} vs u {input_type}")
        _check(B.dtype == (input_type if B.dim() >= 3 else A.dtype), f"B is {B.dtype}")
        _check(C.dtype == (input_type if C.dim() >= 3 else A.dtype), f"C is {C.dtype}")
        _check(D is None or D.dtype == torch.float32, "D must be float32")
        _check(delta_bias is None or delta_bias.dtype == torch.float32, "delta_bias must be float32")
        _check(z is None or z.dtype == input_type, "z must have u's dtype")
        calls.append(input_type)
        with torch.autocast(u.device.type, enabled=False):
            y = ssm.selective_scan_torch(u, delta, A, B, C, D, delta_bias, delta_softplus).to(input_type)
        if y.requires_grad:
            y.register_hook(lambda g: _check(g.dtype == input_type, f"dout {g.dtype} vs u {input_type}"))
        return y

    return selective_scan_fn


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_whole_mv_hybrid_under_autocast_through_the_kernel_branch(monkeypatch, dtype):
    calls: list = []
    monkeypatch.setattr(ssm, "scan_kernel_for", lambda u: fake_kernel(calls))
    torch.manual_seed(0)
    model = create_model("mv_hybrid_tiny")
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=dtype):
        out = model(x)
    out.float().square().mean().backward()
    assert calls == [torch.float32] * 2  # both Mamba blocks went through the kernel, in float32
    assert torch.isfinite(out.float()).all()
    grads = {n: p.grad for n, p in model.named_parameters() if n != "mask_token"}  # mask: training only
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["blocks.blocks.0.mixer.A_log"].abs().sum() > 0


def test_kernel_branch_equals_our_scan_in_float32(monkeypatch):
    torch.manual_seed(0)
    model = create_model("mv_hybrid_tiny").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model(x)
        monkeypatch.setattr(ssm, "scan_kernel_for", lambda u: fake_kernel([]))
        through_kernel = model(x)
    torch.testing.assert_close(through_kernel, ours, rtol=0, atol=0)
