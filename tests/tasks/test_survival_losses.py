"""Cox partial likelihood (Breslow) and the discrete-time NLL against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mvh.errors import DataError
from mvh.tasks.survival.losses import cox_ph_loss, nll_risk, nll_survival_loss, time_bin_edges, time_to_bin


def _breslow_loop(risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> float:
    total = 0.0
    for i in range(len(risk)):
        if event[i]:
            at_risk = [math.exp(risk[j]) for j in range(len(risk)) if time[j] >= time[i]]
            total -= risk[i] - math.log(sum(at_risk))
    return total / event.sum()


def test_cox_loss_equals_the_breslow_formula_with_ties() -> None:
    rng = np.random.default_rng(0)
    risk = rng.normal(size=30)
    time = rng.integers(1, 6, size=30).astype(float)
    event = (rng.random(30) < 0.6).astype(float)
    got = cox_ph_loss(torch.tensor(risk), torch.tensor(time), torch.tensor(event))
    assert got.item() == pytest.approx(_breslow_loop(risk, time, event), rel=1e-10)


def test_cox_loss_is_minimised_at_the_sksurv_breslow_fit() -> None:
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 3))
    time = np.ceil(rng.exponential(1 / np.exp(x @ np.array([1.0, -0.5, 0.0]))) * 4)  # ties on purpose
    event = rng.random(80) < 0.7
    fit = CoxPHSurvivalAnalysis(ties="breslow", alpha=0.0).fit(x, Surv.from_arrays(event, time))
    beta = torch.tensor(fit.coef_, requires_grad=True)
    loss = cox_ph_loss(torch.tensor(x) @ beta, torch.tensor(time), torch.tensor(event, dtype=torch.float64))
    loss.backward()
    assert beta.grad.abs().max().item() < 1e-5


def test_cox_loss_without_events_is_zero_and_keeps_the_graph() -> None:
    risk = torch.randn(4, requires_grad=True)
    loss = cox_ph_loss(risk, torch.arange(4.0), torch.zeros(4))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(risk.grad == 0)


def _nll_loop(hazards: np.ndarray, y: np.ndarray, event: np.ndarray, alpha: float) -> float:
    total = 0.0
    for h, k, e in zip(hazards, y, event, strict=True):
        if e:
            lik = h[k] * np.prod(1 - h[:k])
            total += -math.log(lik)
        else:
            total += -(1 - alpha) * math.log(np.prod(1 - h[: k + 1]))
    return total / len(y)


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_nll_equals_the_discrete_time_likelihood(alpha: float) -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(12, 4))
    y = rng.integers(0, 4, size=12)
    event = rng.random(12) < 0.5
    observed = torch.tensor(event, dtype=torch.float64)
    got = nll_survival_loss(torch.tensor(logits), torch.tensor(y), observed, alpha)
    expected = _nll_loop(1 / (1 + np.exp(-logits)), y, event, alpha)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_nll_risk_orders_by_hazard() -> None:
    logits = torch.tensor([[-3.0, -3.0, -3.0], [0.0, 0.0, 0.0], [3.0, 3.0, 3.0]])
    risk = nll_risk(logits)
    assert risk[0] < risk[1] < risk[2]
    s = torch.cumprod(1 - torch.sigmoid(logits), dim=1)
    torch.testing.assert_close(risk, -s.sum(1))


def test_time_bins_are_event_quantiles_and_cover_all_times() -> None:
    time = np.arange(1.0, 101.0)
    event = np.ones(100, dtype=int)
    edges = time_bin_edges(time, event, 4)
    np.testing.assert_allclose(edges[1:-1], np.quantile(time, [0.25, 0.5, 0.75]))
    bins = time_to_bin(np.array([-5.0, 1.0, 30.0, 60.0, 99.0, 1e9]), edges)
    assert bins.tolist() == [0, 0, 1, 2, 3, 3]
    assert np.bincount(time_to_bin(time, edges)).tolist() == [25, 25, 25, 25]


def test_time_bins_need_enough_events() -> None:
    with pytest.raises(DataError, match="--bins"):
        time_bin_edges(np.arange(10.0), np.r_[np.ones(3), np.zeros(7)], 4)
