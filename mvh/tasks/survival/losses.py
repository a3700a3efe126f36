"""Survival losses: Cox partial likelihood (Breslow ties) and the discrete-time hazard NLL.

The NLL follows the convention of MCAT/PORPOISE/SurvPath (Zadeh & Schmid, 2021): the model emits one
hazard logit per time bin, h_k = sigmoid(logit_k) = P(T in bin k | T >= bin k), the survival after bin
k is S_k = prod_{j<=k} (1 - h_j), and the patient's risk score is -sum_k S_k.
"""

from __future__ import annotations

import numpy as np
import torch

from mvh.errors import DataError


def cox_ph_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox log partial likelihood with Breslow ties, averaged over events.

    risk [B] (log relative hazard), time [B], event [B] (1 = event, 0 = censored) -> scalar.
    Breslow: the risk set of an event at time t is every patient with time >= t, tied events included.
    A batch without events carries no information and returns a zero that keeps the graph.
    """
    risk = risk.reshape(-1)
    event = event.reshape(-1).to(risk.dtype)
    time = time.reshape(-1).to(risk.device)
    n_events = event.sum()
    if n_events.item() == 0:
        return risk.sum() * 0.0
    at_risk = time.unsqueeze(0) >= time.unsqueeze(1)  # [i, j]: j is in the risk set of i
    masked = risk.unsqueeze(0).expand(risk.numel(), -1).masked_fill(~at_risk, float("-inf"))
    log_risk_set = torch.logsumexp(masked, dim=1)
    return -((risk - log_risk_set) * event).sum() / n_events


def nll_survival_loss(
    logits: torch.Tensor, bin_index: torch.Tensor, event: torch.Tensor, alpha: float = 0.0, eps: float = 1e-7
) -> torch.Tensor:
    """Discrete-time survival NLL (SurvPath convention), averaged over the batch.

    logits [B, K] hazard logits, bin_index [B] (int, bin of the observed time), event [B] (1 = event).
    An event in bin y contributes -log S_{y-1} - log h_y; a patient censored in bin y contributes
    -log S_y (alive through the end of its bin). `alpha` re-weights the event terms:
    loss = (1 - alpha) * (censored + event terms) + alpha * event terms (SurvPath default alpha = 0).
    """
    hazards = torch.sigmoid(logits)
    survival = torch.cumprod(1.0 - hazards, dim=1)
    padded = torch.cat([torch.ones_like(survival[:, :1]), survival], dim=1)  # S_{-1} = 1
    y = bin_index.reshape(-1, 1).long().to(logits.device)
    observed = event.reshape(-1, 1).to(logits.dtype)
    s_before = torch.gather(padded, 1, y).clamp(min=eps)
    h_at = torch.gather(hazards, 1, y).clamp(min=eps)
    s_after = torch.gather(padded, 1, y + 1).clamp(min=eps)
    event_term = -observed * (torch.log(s_before) + torch.log(h_at))
    censored_term = -(1.0 - observed) * torch.log(s_after)
    loss = (1.0 - alpha) * (event_term + censored_term) + alpha * event_term
    return loss.mean()


def nll_risk(logits: torch.Tensor) -> torch.Tensor:
    """Risk score from hazard logits [B, K] -> [B]: minus the summed survival curve (SurvPath)."""
    return -torch.cumprod(1.0 - torch.sigmoid(logits), dim=1).sum(dim=1)


def time_bin_edges(time: np.ndarray, event: np.ndarray, n_bins: int = 4) -> np.ndarray:
    """Bin edges [n_bins + 1] at the quantiles of event times (SurvPath), widened to cover all `time`.

    Fit them on training patients only; the outer edges are -inf/+inf so any later time falls in a bin.
    """
    time = np.asarray(time, dtype=np.float64)
    event_times = time[np.asarray(event).astype(bool)]
    if event_times.size < n_bins:
        raise DataError(
            f"{event_times.size} events are too few for {n_bins} time bins; use fewer --bins or --loss cox"
        )
    edges = np.quantile(event_times, np.linspace(0.0, 1.0, n_bins + 1))
    edges[0], edges[-1] = -np.inf, np.inf
    if np.any(np.diff(edges) <= 0):
        raise DataError(
            f"event times have too few distinct values for {n_bins} quantile bins; use fewer --bins"
        )
    return edges


def time_to_bin(time: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Index [N] of the bin [edges[k], edges[k+1]) that holds each time."""
    index = np.searchsorted(edges, np.asarray(time, dtype=np.float64), side="right") - 1
    return np.clip(index, 0, len(edges) - 2)
