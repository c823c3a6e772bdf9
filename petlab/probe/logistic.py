"""The linear probe's head fitted the way frozen features are usually evaluated (CLIP's linear probe).

Multinomial logistic regression with an L2 penalty, solved by L-BFGS (to scikit-learn's tolerance, or
max_iter) on the cached features (scikit-learn's LogisticRegression), for every inverse strength C of a log
grid; the C whose head is best on the val split by the pipeline's one selection rule is kept. The result is the same nn.Linear
head the other routes train, so checkpoints and the evaluate stage do not change.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from petlab.core.errors import PipelineError
from petlab.core.metrics import classification_metrics, rounded
from petlab.train.state import SELECTION_RULE, selection_key

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

SWEEP_COLUMNS = [
    "c",
    "log10_c",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_macro_f1",
    "val_top5_accuracy",
    "iterations",
    "converged",
]

Split = tuple[torch.Tensor, torch.Tensor]  # (features, labels)


@dataclass
class LogisticFit:
    c: float  # the C kept
    best_val: dict[str, float]  # its val metrics: loss, accuracy, macro_f1, top5_accuracy (over 5 classes)
    head_state: dict[str, torch.Tensor]  # an nn.Linear's state: weight (classes x features), bias
    sweep: list[dict]  # one row per C of the grid, by increasing C (SWEEP_COLUMNS)

    @property
    def edge(self) -> str | None:
        """'largest' or 'smallest' when the kept C is at that end of a grid of several: a C beyond may be better."""
        grid = [row["c"] for row in self.sweep]
        if len(grid) > 1 and self.c in (grid[0], grid[-1]):
            return "largest" if self.c == grid[-1] else "smallest"
        return None

    @property
    def selection(self) -> dict:
        """How the head was chosen, for the metrics file and the checkpoint."""
        kept = next(row for row in self.sweep if row["c"] == self.c)
        # The grid as one string, for the checkpoint and the printed line (c_sweep.csv has a row per C).
        return {
            "selection": f"{SELECTION_RULE}, over train_vit.c_grid",
            "selected_c": self.c,
            "c_grid": " ".join(f"{row['c']:g}" for row in self.sweep),
            "iterations": kept["iterations"],
            "converged": kept["converged"],
            "c_at_grid_edge": self.edge is not None,
        }


def linear_head(solver: LogisticRegression, num_classes: int) -> nn.Linear:
    """The fitted model as an nn.Linear whose logits give the same probabilities (float32, like any head)."""
    coef, intercept = solver.coef_, solver.intercept_
    if num_classes == 2:  # scikit-learn keeps one row, class 1's logit against class 0: softmax([0, z]) = sigmoid(z)
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    head = nn.Linear(coef.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(coef))
        head.bias.copy_(torch.from_numpy(intercept))
    return head


@torch.inference_mode()
def head_metrics(head: nn.Linear, split: Split, num_classes: int) -> dict[str, float]:
    """The same metrics the training loop and evaluate compute, from the float32 head itself."""
    features, labels = split
    logits = head(features.float())
    return {
        "loss": float(nn.functional.cross_entropy(logits, labels)),
        **classification_metrics(logits, labels, num_classes),
    }


def fit_logistic_probe(
    train: Split,
    val: Split,
    num_classes: int,
    c_grid: list[float],
    max_iter: int,
    name: str = "probe",
    grid_key: str = "train_vit.c_grid",
) -> LogisticFit:
    """Fit one head per C (increasing), keep the best on val by SELECTION_RULE (no refit on train + val, so
    the val metrics reported for it stay out-of-sample, as the other routes' are). `grid_key` names the param the
    grid came from, in the warnings."""
    features, labels = train
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing:
        raise PipelineError(f"{name}: no training sample of class {missing}: logistic regression needs every class")
    # Imported here: scikit-learn takes about 2 s to import, which the stages that never fit a probe need not pay.
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    # float64 for the solver: L-BFGS's line search and stopping test are meant for it.
    x, y = features.double().numpy(), labels.numpy()
    sweep, best, best_key = [], None, None
    for c in sorted(c_grid):
        # Each C from scratch, as in CLIP's protocol, so a C's head does not depend on the rest of the grid (warm
        # starts along the grid halve the time but stop at once where the previous solution is within tol).
        # One BLAS/OpenMP thread: matrices this small gain nothing from more, threads waiting for a busy core
        # made the fit about 40x slower on a shared 2-core machine, and the sums no longer depend on the core count.
        solver = LogisticRegression(C=c, max_iter=max_iter)  # tol and everything else: scikit-learn's defaults
        with warnings.catch_warnings(), threadpool_limits(limits=1):
            warnings.simplefilter("ignore", ConvergenceWarning)  # recorded per C instead, and reported once below
            solver.fit(x, y)
        head = linear_head(solver, num_classes)
        train_m, val_m = head_metrics(head, train, num_classes), head_metrics(head, val, num_classes)
        iterations = int(solver.n_iter_.max())
        sweep.append(
            {
                "c": float(c),
                **rounded(
                    {
                        "log10_c": math.log10(c),
                        "train_loss": train_m["loss"],  # C exact
                        "train_accuracy": train_m["accuracy"],
                        **{f"val_{k}": v for k, v in val_m.items()},
                        "iterations": iterations,
                        "converged": iterations < max_iter,
                    }
                ),
            }
        )
        if best is None or selection_key(val_m) > best_key:
            best, best_key = LogisticFit(float(c), rounded(val_m), head.state_dict(), []), selection_key(val_m)
    best.sweep = sweep
    stopped = [row["c"] for row in sweep if not row["converged"]]
    if stopped:
        print(
            f"{name}: WARNING: L-BFGS stopped at max_iter {max_iter} before converging for C = {stopped} "
            f"(raise train_vit.max_iter)",
            flush=True,
        )
    if best.edge:
        print(
            f"{name}: WARNING: the kept C = {best.c:g} is the {best.edge} of {grid_key}; a C beyond it may "
            f"do better on val (extend {grid_key})",
            flush=True,
        )
    for row in sweep:
        mark = " <- kept" if row["c"] == best.c else ""
        print(
            f"{name}: C {row['c']:<8g} val accuracy {row['val_accuracy']:.4f} val macro-F1 "
            f"{row['val_macro_f1']:.4f} val loss {row['val_loss']:.4f} ({row['iterations']} iterations){mark}",
            flush=True,
        )
    return best
