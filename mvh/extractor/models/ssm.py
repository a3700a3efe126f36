"""Selective scan (Mamba S6): mamba_ssm's CUDA kernel when available, else our own PyTorch scan.

Shapes (mamba_ssm convention): u, delta [B, D, L]; A [D, N]; B, C [B, N, L]; D [D]; delta_bias [D].
The recurrence, per channel d and state n, over the token axis t:
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,    y_t = <h_t, C_t> + D * u_t
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)


@functools.cache
def mamba_selective_scan_fn() -> Callable[..., Tensor] | None:
    """mamba_ssm's `selective_scan_fn`, or None when mamba_ssm (and its CUDA extension) does not import."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:  # released mamba_ssm raises various errors at import on CPU-only machines
        logger.debug("mamba_ssm unavailable (%s): using the PyTorch selective scan", exc)
        return None
    return selective_scan_fn


class _SelectiveScan(torch.autograd.Function):
    """The recurrence token by token on one cache-resident state; backward recomputes chunk by chunk.

    Tokens are the outer axis ([L, B, D, N] order) so that each step updates one contiguous [B, D, N]
    state in place (mul_, addcmul_) and no [B, D, L, N] tensor is ever allocated. Forward saves only
    the inputs and the state at every `chunk`-th token; backward recomputes each chunk's states from
    there and runs the adjoint recurrence in reverse (the design of mamba_ssm's CUDA kernel).
    """

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int) -> Tensor:  # type: ignore[override]
        dt = delta.permute(2, 0, 1).contiguous()  # [L, B, D]
        du = (dt * u.permute(2, 0, 1)).contiguous()  # [L, B, D]
        bt = B.permute(2, 0, 1).contiguous()  # [L, B, N]
        ct = C.permute(2, 0, 1).contiguous()  # [L, B, N]
        length, batch, dim = dt.shape
        y = dt.new_empty(length, batch, dim)
        a = dt.new_empty(batch, dim, A.shape[1])
        h = dt.new_zeros(batch, dim, A.shape[1])
        keep_starts = any(ctx.needs_input_grad)
        starts = []
        for t in range(length):
            if keep_starts and t % chunk == 0:
                starts.append(h.clone())
            torch.mul(dt[t].unsqueeze(-1), A, out=a).exp_()
            h.mul_(a).addcmul_(du[t].unsqueeze(-1), bt[t].unsqueeze(1))
            torch.matmul(h, ct[t].unsqueeze(-1), out=y[t].unsqueeze(-1))
        ctx.chunk = chunk
        if keep_starts:
            ctx.save_for_backward(u, dt, du, A, bt, ct, torch.stack(starts))
        return y.permute(1, 2, 0)

    @staticmethod
    def backward(ctx, grad_y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, None]:  # type: ignore[override]
        u, dt, du, A, bt, ct, starts = ctx.saved_tensors
        chunk = ctx.chunk
        length, batch, dim = dt.shape
        n_state = A.shape[1]
        gy = grad_y.permute(2, 0, 1).contiguous()  # [L, B, D]
        g_dt, g_du = torch.empty_like(dt), torch.empty_like(dt)
        g_b, g_c = torch.empty_like(bt), torch.empty_like(ct)
        g_a = torch.zeros_like(A)
        a_buf = dt.new_empty(chunk, batch, dim, n_state)
        h_buf = dt.new_empty(chunk, batch, dim, n_state)
        g_buf = dt.new_empty(chunk, batch, dim, n_state)
        carry = dt.new_zeros(batch, dim, n_state)  # a_{s} * dL/dh_{s}: what the next chunk sends back
        for k, s in reversed(list(enumerate(range(0, length, chunk)))):
            n = min(chunk, length - s)
            sl = slice(s, s + n)
            a, hs = _chunk_states(dt[sl], du[sl], A, bt[sl], starts[k], a_buf[:n], h_buf[:n])
            flat_h = hs.view(n * batch, dim, n_state)
            torch.matmul(gy[sl].view(n * batch, 1, dim), flat_h, out=g_c[sl].view(n * batch, 1, n_state))
            # dL/dh_t = C_t dL/dy_t + a_{t+1} dL/dh_{t+1}: the recurrence run backwards.
            gh = torch.mul(gy[sl].unsqueeze(-1), ct[sl].unsqueeze(2), out=g_buf[:n])
            gh[n - 1].add_(carry)
            for t in range(n - 2, -1, -1):
                gh[t].addcmul_(a[t + 1], gh[t + 1])
            carry = a[0] * gh[0]
            flat_g = gh.view(n * batch, dim, n_state)
            torch.matmul(flat_g, bt[sl].view(n * batch, n_state, 1), out=g_du[sl].view(n * batch, dim, 1))
            torch.matmul(du[sl].view(n * batch, 1, dim), flat_g, out=g_b[sl].view(n * batch, 1, n_state))
            # dL/d(delta*A) = dL/dh_t * h_{t-1} * a_t, reusing the gradient buffer.
            gh.mul_(a)
            gh[1:].mul_(hs[:-1])
            gh[0].mul_(starts[k])
            torch.sum(gh * A, dim=-1, out=g_dt[sl])
            g_a.add_(torch.einsum("tbdn,tbd->dn", gh, dt[sl]))
        g_delta = g_dt + g_du * u.permute(2, 0, 1)
        g_u = g_du * dt
        return (
            g_u.permute(1, 2, 0),
            g_delta.permute(1, 2, 0),
            g_a,
            g_b.permute(1, 2, 0),
            g_c.permute(1, 2, 0),
            None,
        )


def _chunk_states(
    dt: Tensor, du: Tensor, A: Tensor, bt: Tensor, h0: Tensor, a_out: Tensor, h_out: Tensor
) -> tuple[Tensor, Tensor]:
    """Decays a_t = exp(dt_t A) and states h_t [n, B, D, N] of one chunk, starting from state h0 [B, D, N]."""
    a = torch.mul(dt.unsqueeze(-1), A, out=a_out).exp_()
    hs = torch.mul(du.unsqueeze(-1), bt.unsqueeze(2), out=h_out)
    hs[0].addcmul_(a[0], h0)
    for t in range(1, hs.shape[0]):
        hs[t].addcmul_(a[t], hs[t - 1])
    return a, hs


def selective_scan_torch(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    chunk: int = 16,
) -> Tensor:
    """Our PyTorch selective scan: y [B, D, L] in u's dtype, computed in float32, `chunk` tokens at a time."""
    dtype_in = u.dtype
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    y = _SelectiveScan.apply(u, delta, A, B, C, chunk)
    if D is not None:
        y = y + u * D.float()[:, None]
    return y.to(dtype_in)


def scan_kernel_for(u: Tensor) -> Callable[..., Tensor] | None:
    """The fused kernel for tensors like `u`: mamba_ssm's on a CUDA device when it imports, else None."""
    return mamba_selective_scan_fn() if u.is_cuda else None


def selective_scan_cuda(
    kernel: Callable[..., Tensor],
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """Call mamba_ssm's `selective_scan_fn` with every input float32 and contiguous, autocast off.

    The kernel casts nothing and its C++ entry requires delta, B, C (and dout in backward) of u's dtype.
    Under autocast the mixer hands over float32 u (conv weights are float32) with bfloat16/float16 delta,
    B, C, so everything is made float32 here: the scan runs in float32 on every path, as ours does.
    """
    with torch.autocast(device_type=u.device.type, enabled=False):
        return kernel(
            u.float().contiguous(),
            delta.float().contiguous(),
            A.float().contiguous(),
            B.float().contiguous(),
            C.float().contiguous(),
            None if D is None else D.float().contiguous(),
            z=None,
            delta_bias=None if delta_bias is None else delta_bias.float().contiguous(),
            delta_softplus=delta_softplus,
            return_last_state=False,
        )


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """Selective scan y [B, D, L] (u's dtype): mamba_ssm's CUDA kernel on GPU when it imports, else ours."""
    kernel = scan_kernel_for(u)
    if kernel is not None:
        return selective_scan_cuda(kernel, u, delta, A, B, C, D, delta_bias, delta_softplus)
    return selective_scan_torch(u, delta, A, B, C, D, delta_bias=delta_bias, delta_softplus=delta_softplus)
