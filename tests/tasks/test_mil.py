"""ABMIL: shapes, masking, permutation invariance, and a forward pass recomputed from its parameters."""

from __future__ import annotations

import pytest
import torch

from mvh.tasks.mil import ABMIL, pad_bags

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest on one thread


def _model(n_outputs: int = 1) -> ABMIL:
    torch.manual_seed(0)
    return ABMIL(in_dim=12, hidden_dim=16, attn_dim=8, n_outputs=n_outputs).eval()


def test_structure_follows_the_issue() -> None:
    model = ABMIL(in_dim=32)
    linear, relu, dropout = model.project
    assert (linear.in_features, linear.out_features) == (32, 256)
    assert isinstance(relu, torch.nn.ReLU) and dropout.p == 0.25
    assert model.head.out_features == 1
    assert ABMIL(in_dim=32, n_outputs=4).head.out_features == 4


def test_forward_matches_gated_attention_written_out() -> None:
    model = _model()
    x = torch.randn(9, 12)
    out, attention = model(x)
    p = dict(model.named_parameters())
    h = torch.relu(x @ p["project.0.weight"].T + p["project.0.bias"])
    a = torch.tanh(h @ p["attention.V.weight"].T + p["attention.V.bias"])
    g = torch.sigmoid(h @ p["attention.U.weight"].T + p["attention.U.bias"])
    scores = (a * g) @ p["attention.w.weight"].T.squeeze(1) + p["attention.w.bias"]
    expected_att = torch.exp(scores) / torch.exp(scores).sum()
    pooled = (expected_att[:, None] * h).sum(0)
    expected_out = pooled @ p["head.weight"].T + p["head.bias"]
    torch.testing.assert_close(attention[0], expected_att)
    torch.testing.assert_close(out[0], expected_out)


def test_attention_is_a_distribution_and_padding_is_ignored() -> None:
    model = _model(n_outputs=4)
    bags = [torch.randn(n, 12) for n in (3, 11, 7)]
    x, mask = pad_bags(bags)
    assert x.shape == (3, 11, 12) and mask.sum(1).tolist() == [3, 11, 7]
    out, attention = model(x, mask)
    assert out.shape == (3, 4) and attention.shape == (3, 11)
    torch.testing.assert_close(attention.sum(1), torch.ones(3))
    assert torch.all(attention[~mask] == 0)
    for i, bag in enumerate(bags):
        single_out, single_att = model(bag)
        torch.testing.assert_close(out[i], single_out[0])
        torch.testing.assert_close(attention[i, : len(bag)], single_att[0])


def test_permutation_invariant_output_and_equivariant_attention() -> None:
    model = _model()
    x = torch.randn(20, 12)
    perm = torch.randperm(20)
    out, att = model(x)
    out_p, att_p = model(x[perm])
    torch.testing.assert_close(out, out_p)
    torch.testing.assert_close(att[0, perm], att_p[0])


def test_every_parameter_gets_a_gradient() -> None:
    model = _model(n_outputs=4).train()
    x, mask = pad_bags([torch.randn(5, 12), torch.randn(8, 12)])
    out, _ = model(x, mask)
    out.sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_flat_forward_equals_the_padded_forward_in_values_and_gradients() -> None:
    bags = [torch.randn(n, 12) * 3 for n in (3, 11, 1, 7)]
    padded, flat = _model(n_outputs=4), _model(n_outputs=4)
    x, mask = pad_bags(bags)
    out_p, att_p = padded(x, mask)
    index = torch.repeat_interleave(torch.arange(4), torch.tensor([len(b) for b in bags]))
    out_f, att_f = flat.forward_flat(torch.cat(bags), index, 4)
    torch.testing.assert_close(out_f, out_p)
    torch.testing.assert_close(att_f, att_p[mask])
    weights = torch.randn(4, 4)
    (out_p * weights).sum().backward()
    (out_f * weights).sum().backward()
    for (name, p), q in zip(padded.named_parameters(), flat.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
