"""Settings of the survival protocol: ABMIL training, the CoxPH baseline and the cross-validation."""

from __future__ import annotations

from dataclasses import dataclass

from mvh.errors import UsageError

LOSSES = ("cox", "nll")
MODELS = ("abmil", "coxph")


@dataclass(frozen=True)
class SurvivalSettings:
    """Hyper-parameters of one survival evaluation (validated on construction; saved in results.json).

    `threads`: CPU threads of the ABMIL training. ABMIL's steps are many small operations, so one thread
    is the default: measured on a shared 2-core machine, an epoch took 1.1 s with 1 thread and 7.9 s
    with 2 (threads waiting on each other); raise it on a machine with idle cores.
    """

    loss: str = "cox"
    n_bins: int = 4
    folds: int = 5
    epochs: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-4
    batch_size: int = 16
    max_tiles: int | None = 4096
    val_fraction: float = 0.2
    patience: int = 5
    hidden_dim: int = 256
    attn_dim: int = 128
    dropout: float = 0.25
    nll_alpha: float = 0.0
    l1_ratio: float = 0.5
    coxph_folds: int = 5
    coxph_alphas: int = 30
    seed: int = 0
    device: str = "auto"
    threads: int = 1

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise UsageError(f"--loss {self.loss!r} is unknown; use one of {', '.join(LOSSES)}")
        checks = [
            ("--folds", self.folds, self.folds >= 2, ">= 2"),
            ("--epochs", self.epochs, self.epochs >= 1, ">= 1"),
            ("--bins", self.n_bins, self.n_bins >= 2, ">= 2"),
            ("--lr", self.lr, self.lr > 0, "> 0"),
            ("--weight-decay", self.weight_decay, self.weight_decay >= 0, ">= 0"),
            ("--batch-size", self.batch_size, self.batch_size >= 1, ">= 1"),
            ("--max-tiles", self.max_tiles, self.max_tiles is None or self.max_tiles >= 1, ">= 1"),
            ("--val-fraction", self.val_fraction, 0.0 <= self.val_fraction < 1.0, "in [0, 1)"),
            ("--patience", self.patience, self.patience >= 1, ">= 1"),
            ("hidden_dim", self.hidden_dim, self.hidden_dim >= 1, ">= 1"),
            ("attn_dim", self.attn_dim, self.attn_dim >= 1, ">= 1"),
            ("dropout", self.dropout, 0.0 <= self.dropout < 1.0, "in [0, 1)"),
            ("nll_alpha", self.nll_alpha, 0.0 <= self.nll_alpha <= 1.0, "in [0, 1]"),
            ("--l1-ratio", self.l1_ratio, 0.0 < self.l1_ratio <= 1.0, "in (0, 1]"),
            ("--coxph-folds", self.coxph_folds, self.coxph_folds >= 2, ">= 2"),
            ("coxph_alphas", self.coxph_alphas, self.coxph_alphas >= 2, ">= 2"),
            ("--threads", self.threads, self.threads >= 1, ">= 1"),
        ]
        for name, value, ok, rule in checks:
            if not ok:
                raise UsageError(f"{name} {value} is out of range: it must be {rule}")
