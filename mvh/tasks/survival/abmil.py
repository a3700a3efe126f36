"""ABMIL survival training: AdamW on padded patient batches, early stopping on an inner validation split."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mvh.core.device import resolve_device
from mvh.tasks.mil import ABMIL
from mvh.tasks.survival.losses import cox_ph_loss, nll_risk, nll_survival_loss, time_bin_edges, time_to_bin
from mvh.tasks.survival.metrics import harrell_c
from mvh.tasks.survival.settings import SurvivalSettings


def _risk_from_outputs(outputs: torch.Tensor, loss: str) -> torch.Tensor:
    return outputs[:, 0] if loss == "cox" else nll_risk(outputs)


EVAL_TILES = 1 << 16


def _flat_batch(bags: Sequence[np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Bags [N_i, dim] (any float dtype) -> tiles [sum N_i, dim] float32 and bag index [sum N_i]."""
    x = torch.from_numpy(np.concatenate(bags, axis=0).astype(np.float32, copy=False)).to(device)
    sizes = torch.as_tensor([len(b) for b in bags], device=device)
    return x, torch.repeat_interleave(torch.arange(len(bags), device=device), sizes)


@torch.no_grad()
def _bag_outputs(
    model: ABMIL, bags: Sequence[np.ndarray], device: torch.device
) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Eval-mode outputs [P, n_out] and attention [N_i] per bag: whole bags, ~EVAL_TILES tiles a pass."""
    model.eval()
    outputs, attentions = [], []
    start = 0
    while start < len(bags):
        stop, tiles = start + 1, len(bags[start])
        while stop < len(bags) and tiles + len(bags[stop]) <= EVAL_TILES:
            tiles += len(bags[stop])
            stop += 1
        x, bag = _flat_batch(bags[start:stop], device)
        out, attention = model.forward_flat(x, bag, stop - start)
        outputs.append(out)
        sizes = [len(b) for b in bags[start:stop]]
        attentions += list(torch.split(attention.float().cpu(), sizes))
        start = stop
    return torch.cat(outputs), [a.numpy() for a in attentions]


def predict_abmil(
    model: ABMIL, bags: Sequence[np.ndarray], loss: str, device: torch.device
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Risk [P] (higher = earlier event) and attention [N_i] per bag; full bags, never subsampled."""
    outputs, attentions = _bag_outputs(model, bags, device)
    return _risk_from_outputs(outputs, loss).double().cpu().numpy(), attentions


def _loss(
    outputs: torch.Tensor, time: torch.Tensor, event: torch.Tensor, bins: torch.Tensor | None,
    config: SurvivalSettings,
) -> torch.Tensor:
    if config.loss == "cox":
        return cox_ph_loss(outputs[:, 0], time, event)
    assert bins is not None
    return nll_survival_loss(outputs, bins, event, alpha=config.nll_alpha)


def _sample_tiles(bag: np.ndarray, max_tiles: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_tiles is None or len(bag) <= max_tiles:
        return bag
    return bag[np.sort(rng.choice(len(bag), size=max_tiles, replace=False))]


@dataclass
class TrainReport:
    """What happened while training one fold's ABMIL."""

    epochs_run: int
    best_epoch: int
    best_val_loss: float | None
    best_val_c: float | None
    losses: list[float] = field(default_factory=list)


def _targets(
    time: np.ndarray, event: np.ndarray, bin_edges: np.ndarray | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Times [P], events [P] and, for the NLL loss, time-bin indices [P] as tensors on `device`."""
    bins = None if bin_edges is None else torch.as_tensor(time_to_bin(time, bin_edges), device=device)
    return (
        torch.as_tensor(time, dtype=torch.float32, device=device),
        torch.as_tensor(event, dtype=torch.float32, device=device),
        bins,
    )


def _train_epoch(
    model: ABMIL,
    optimiser: torch.optim.Optimizer,
    bags: Sequence[np.ndarray],
    targets: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    config: SurvivalSettings,
    rng: np.random.Generator,
    device: torch.device,
) -> float:
    """One pass over shuffled patients in steps of `config.batch_size` bags (unpadded); mean step loss."""
    model.train()
    time, event, bins = targets
    order = rng.permutation(len(bags))
    losses = []
    for start in range(0, len(order), config.batch_size):
        idx = order[start : start + config.batch_size]
        sel = torch.as_tensor(idx, device=device)
        if config.loss == "cox" and event[sel].sum() == 0:
            continue  # no event: the partial likelihood carries no information
        sampled = [_sample_tiles(bags[i], config.max_tiles, rng) for i in idx]
        x, bag = _flat_batch(sampled, device)
        outputs, _ = model.forward_flat(x, bag, len(sampled))
        loss = _loss(outputs, time[sel], event[sel], None if bins is None else bins[sel], config)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses)) if losses else float("nan")


def train_abmil(
    bags: Sequence[np.ndarray],
    time: np.ndarray,
    event: np.ndarray,
    config: SurvivalSettings,
    *,
    val: tuple[Sequence[np.ndarray], np.ndarray, np.ndarray] | None = None,
    bin_edges: np.ndarray | None = None,
    seed: int = 0,
    device: torch.device | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[ABMIL, TrainReport]:
    """Train ABMIL on bags [N_i, dim] with AdamW; early-stop on the loss of `val` (bags, time, event).

    Each optimiser step's loss covers `config.batch_size` patients (a Cox partial likelihood needs several
    events per step); bags larger than `config.max_tiles` are randomly subsampled, afresh every epoch.
    The returned model holds the weights of the best validation epoch (the last epoch without `val`);
    `on_epoch(epoch, mean training loss)` is called after every epoch.
    """
    device = device or resolve_device(config.device)
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event).astype(np.int64)
    if config.loss == "nll" and bin_edges is None:
        bin_edges = time_bin_edges(time, event, config.n_bins)
    n_out = 1 if config.loss == "cox" else config.n_bins
    rng = np.random.default_rng(seed)
    targets = _targets(time, event, bin_edges, device)
    val_targets = None if val is None else _targets(np.asarray(val[1], np.float64), val[2], bin_edges, device)
    report = TrainReport(epochs_run=0, best_epoch=config.epochs, best_val_loss=None, best_val_c=None)
    best_state, best_loss, stale = None, math.inf, 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = ABMIL(bags[0].shape[1], config.hidden_dim, config.attn_dim, n_out, config.dropout).to(device)
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        for epoch in range(1, config.epochs + 1):
            report.losses.append(_train_epoch(model, optimiser, bags, targets, config, rng, device))
            report.epochs_run = epoch
            if on_epoch is not None:
                on_epoch(epoch, report.losses[-1])
            if val is None or val_targets is None:
                continue
            val_out, _ = _bag_outputs(model, val[0], device)
            val_loss = float(_loss(val_out, *val_targets, config))
            if val_loss < best_loss:
                best_loss, best_state, stale = val_loss, copy.deepcopy(model.state_dict()), 0
                val_c = harrell_c(val[2], val[1], _risk_from_outputs(val_out, config.loss).cpu().numpy())
                report.best_epoch, report.best_val_loss = epoch, val_loss
                report.best_val_c = None if np.isnan(val_c) else float(val_c)
            else:
                stale += 1
                if stale >= config.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        report.best_epoch = report.epochs_run
    model.eval()
    return model, report
