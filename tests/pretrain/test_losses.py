"""Loss terms against hand computations: DINO CE with centring, Sinkhorn-Knopp, iBOT, KoLeo, heads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mvh.pretrain.dino_loss import TeacherCentering, cross_entropy_across_crops, dino_loss
from mvh.pretrain.heads import DINOHead
from mvh.pretrain.ibot_loss import ibot_loss, masked_token_weights
from mvh.pretrain.koleo_loss import koleo_loss
from mvh.pretrain.sinkhorn import sinkhorn_knopp


def _log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    log_z = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - log_z for v in row]


def _softmax(row: list[float]) -> list[float]:
    return [math.exp(v) for v in _log_softmax(row)]


def _ce(target: list[float], logits: list[float], temp: float) -> float:
    return -sum(t * lp for t, lp in zip(target, _log_softmax([v / temp for v in logits]), strict=True))


def test_dino_loss_matches_hand_computed_pairs() -> None:
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(3, 2, 4, generator=gen)  # 2 global crops + 1 local, batch 2, 4 prototypes
    teacher = torch.softmax(torch.randn(2, 2, 4, generator=gen), dim=-1)
    s, t = student.tolist(), teacher.tolist()
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]  # (teacher crop, student crop), never the same view
    expected = sum(sum(_ce(t[ti][b], s[si][b], 0.1) for b in range(2)) / 2 for ti, si in pairs) / len(pairs)
    assert dino_loss(student, teacher, student_temp=0.1).item() == pytest.approx(expected, rel=1e-5)
    total, n = cross_entropy_across_crops(student, teacher, 0.1, skip_same_view=False)
    assert n == 6
    assert total.item() > expected * 4  # the two same-view pairs add positive terms


def test_softmax_centering_subtracts_centre_and_moves_it() -> None:
    centering = TeacherCentering(3, mode="softmax_center", center_momentum=0.9)
    centering.center.copy_(torch.tensor([[1.0, 0.0, -1.0]]))
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]])
    probs = centering(logits, teacher_temp=0.5)
    expected = [
        _softmax([(v - c) / 0.5 for v, c in zip(row, [1.0, 0.0, -1.0], strict=True)])
        for row in logits.tolist()
    ]
    np.testing.assert_allclose(probs.numpy(), np.array(expected), rtol=1e-5)
    new_centre = 0.9 * np.array([1.0, 0.0, -1.0]) + 0.1 * np.array([0.5, 1.0, 3.0])
    np.testing.assert_allclose(centering.center.numpy()[0], new_centre, rtol=1e-6)


def test_dino_cross_entropy_with_sinkhorn_targets_is_what_the_student_pays() -> None:
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0]])  # both samples prefer prototype 0
    targets = TeacherCentering(2, mode="sinkhorn_knopp")(logits, teacher_temp=1.0)
    # equipartition forces the batch to use both prototypes: the targets must differ from the plain softmax
    assert targets.sum(0).tolist() == pytest.approx([1.0, 1.0], abs=1e-4)
    student = torch.zeros(2, 2, 2)
    loss = dino_loss(student, targets.view(1, 2, 2).expand(2, 2, 2), student_temp=0.1)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-5)  # uniform student: CE = log K


def test_sinkhorn_knopp_marginals_and_fixed_point() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 5, generator=gen) * 2
    q = sinkhorn_knopp(logits, temperature=0.5, n_iterations=3)
    np.testing.assert_allclose(q.sum(1).numpy(), np.ones(12), rtol=1e-5)  # each sample: a distribution
    softmax_cols = torch.softmax(logits / 0.5, dim=1).sum(0)
    # three iterations already move the prototype masses closer to equipartition than a softmax
    assert (q.sum(0) - 12 / 5).abs().sum() < (softmax_cols - 12 / 5).abs().sum()
    q = sinkhorn_knopp(logits, temperature=0.5, n_iterations=200)
    np.testing.assert_allclose(q.sum(0).numpy(), np.full(5, 12 / 5), rtol=1e-4)
    # a Sinkhorn scaling of exp(L/T): log q - L/T = a_i + b_j, so its double-centred residual vanishes
    r = (q.double().log() - logits.double() / 0.5).numpy()
    residual = r - r.mean(1, keepdims=True) - r.mean(0, keepdims=True) + r.mean()
    assert np.abs(residual).max() < 1e-4


def test_sinkhorn_knopp_is_stable_for_large_logits() -> None:
    q = sinkhorn_knopp(torch.tensor([[500.0, 0.0], [0.0, 500.0]]), temperature=0.04)
    assert torch.isfinite(q).all()


def test_ibot_loss_uses_masked_tokens_only() -> None:
    gen = torch.Generator().manual_seed(2)
    student = torch.randn(2, 3, 4, generator=gen)  # [B, N, K]
    teacher = torch.softmax(torch.randn(2, 3, 4, generator=gen), dim=-1)
    masks = torch.tensor([[True, False, True], [False, True, False]])
    s, t = student.tolist(), teacher.tolist()
    expected = (
        (_ce(t[0][0], s[0][0], 0.1) + _ce(t[0][2], s[0][2], 0.1)) / 2 + _ce(t[1][1], s[1][1], 0.1)
    ) / 2
    loss = ibot_loss(
        student[masks], teacher[masks], masked_token_weights(masks), n_images=2, student_temp=0.1
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # an image without masked tokens adds nothing but counts in the mean (iBOT's convention)
    masks3 = torch.cat([masks, torch.zeros(1, 3, dtype=torch.bool)])
    s3 = torch.cat([student, torch.randn(1, 3, 4, generator=gen) * 100])
    t3 = torch.cat([teacher, teacher[:1]])
    loss3 = ibot_loss(s3[masks3], t3[masks3], masked_token_weights(masks3), n_images=3, student_temp=0.1)
    assert loss3.item() == pytest.approx(expected * 2 / 3, rel=1e-5)


def test_masked_token_weights() -> None:
    masks = torch.tensor([[True, True, False, True], [False, True, False, False]])
    assert masked_token_weights(masks).tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])


def test_koleo_matches_direct_nearest_neighbour_computation() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(9, 6, generator=gen)
    xn = x.double() / x.double().norm(dim=1, keepdim=True)
    d = torch.cdist(xn, xn) + torch.eye(9, dtype=torch.double) * 10
    expected = -torch.log(d.min(dim=1).values).mean().item()
    assert koleo_loss(x).item() == pytest.approx(expected, rel=1e-4)
    spread = torch.eye(6)  # orthonormal rows are far apart: lower loss than near-duplicates
    assert koleo_loss(spread) < koleo_loss(spread + 0.01 * torch.randn(6, 6, generator=gen) + 1.0)


def test_dino_head_shapes_and_normalised_prototypes() -> None:
    head = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8, n_layers=3)
    x = torch.randn(5, 7, 16)
    out = head(x)
    assert out.shape == (5, 7, 32)
    assert out.abs().max() <= 1.0 + 1e-5  # unit bottleneck times unit-norm prototypes: cosine logits
    names = set(head.state_dict())
    assert {"last_layer.weight_g", "last_layer.weight_v"} <= names
    # DINOv2's dino_head.py: weight_norm(Linear) with g filled with 1 and left trainable.
    assert head.last_layer.weight_g.requires_grad
    out.sum().backward()
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)
    frozen = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8, n_layers=3, learn_norm=False)
    assert not frozen.last_layer.weight_g.requires_grad


def test_prototype_layer_equals_torch_weight_norm() -> None:
    from torch.nn.utils.parametrizations import weight_norm

    head = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8, n_layers=3)
    with torch.no_grad():
        head.last_layer.weight_g.uniform_(0.5, 2.0)
    reference = weight_norm(torch.nn.Linear(8, 32, bias=False), dim=0)
    with torch.no_grad():
        reference.parametrizations.weight.original0.copy_(head.last_layer.weight_g)
        reference.parametrizations.weight.original1.copy_(head.last_layer.weight_v)
    z = torch.randn(6, 8)
    torch.testing.assert_close(head.last_layer(z), reference(z))
