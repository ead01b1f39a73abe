"""One training loop for the algorithms that fine-tune the simulation (QAT, Bayesian Bits).

The epoch loop, the task loss (labels, or distillation from the float model), validation,
keeping the best epoch, stopping at a target or on request, and progress live here once; an
algorithm brings its trainable model and optimizer and only what differs: an extra loss term
(Bayesian Bits' expected cost), a learning-rate schedule, fields of its own on the curve.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from qaas_engine.errors import Cancelled
from qaas_engine.quant.sim import QuantSim

Feeds = dict[str, torch.Tensor]
Batch = tuple[Feeds, torch.Tensor | None]

# Softened targets carry more of the teacher than its top-1 (Hinton et al.); 2 beat 1 and 4 on
# MobileNetV2-like digits nets at W4A4 (mean top-1 over four seeds: 0.944 / 0.948 / 0.939).
DISTILLATION_TEMPERATURE = 2.0


def task_loss(
    student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor | None
) -> torch.Tensor:
    """Cross-entropy on labels; without them, match the float model's outputs: KL divergence
    of softened class distributions for classifier logits, normalised MSE otherwise."""
    if labels is not None:
        return nn.functional.cross_entropy(student.reshape(len(labels), -1), labels)
    if teacher is None:
        raise ValueError("distillation needs the float model's outputs")
    if student.dim() == 2 and student.shape[1] > 1:
        t = DISTILLATION_TEMPERATURE
        return nn.functional.kl_div(
            nn.functional.log_softmax(student / t, dim=1),
            nn.functional.log_softmax(teacher / t, dim=1),
            log_target=True,
            reduction="batchmean",
        ) * (t * t)
    return nn.functional.mse_loss(student, teacher) / teacher.var().clamp_min(1e-8)


def on_device(feeds: Feeds, device: torch.device | None) -> Feeds:
    if device is None:
        return feeds
    return {name: value.to(device) for name, value in feeds.items()}


def feeds_count(feeds: Feeds, labels: torch.Tensor | None) -> int:
    if labels is not None:
        return len(labels)
    return int(next(iter(feeds.values())).shape[0])


class Supervision:
    """What a trained model is held to: a batch's labels when it has them, else the float
    model's outputs on the same sim (distillation). Remembers which the data gave."""

    def __init__(
        self,
        sim: QuantSim,
        float_weights: Mapping[str, torch.Tensor],
        device: torch.device | None = None,
    ) -> None:
        self.sim = sim
        self.float_weights = float_weights
        self.device = device
        self.output = sim.executor.output_names[0]
        self.labelled: bool | None = None
        self.validated = 0  # samples behind the last score: how much to trust it
        # the task loss on the same validation batches: it still ranks epochs whose top-1
        # ties (a saturated 1.0 on an easy set)
        self.validation_loss: float | None = None

    @property
    def signal(self) -> str:
        return "labels" if self.labelled else "distillation"

    def _float_outputs(self, feeds: Feeds) -> torch.Tensor:
        return self.sim.executor.run(feeds, weights=self.float_weights)[self.output]

    def loss(
        self, model: Callable[[Feeds], torch.Tensor], feeds: Feeds, labels: torch.Tensor | None
    ) -> torch.Tensor:
        """The task loss of one batch, on the supervision's device."""
        feeds = on_device(feeds, self.device)
        self.labelled = labels is not None
        teacher = None
        if labels is None:
            with torch.no_grad():
                teacher = self._float_outputs(feeds)
        elif self.device is not None:
            labels = labels.to(self.device)
        return task_loss(model(feeds), teacher, labels)

    def score(self, model: Callable[[Feeds], torch.Tensor], batches: Iterable[Batch]) -> float:
        """Validation: top-1 with labels, else top-1 agreement with the float model."""
        hits, total, loss_sum = 0, 0, 0.0
        with torch.no_grad():
            for feeds, labels in batches:
                feeds = on_device(feeds, self.device)
                outputs = model(feeds)
                count = feeds_count(feeds, labels)
                predicted = outputs.reshape(count, -1).argmax(1).cpu()
                if labels is None:
                    teacher = self._float_outputs(feeds)
                    labels = teacher.reshape(len(predicted), -1).argmax(1).cpu()
                    loss = task_loss(outputs, teacher, None)
                else:
                    loss = task_loss(outputs, None, labels.to(outputs.device))
                loss_sum += float(loss) * count
                hits += int((predicted == labels).sum())
                total += len(labels)
        self.validated = total
        self.validation_loss = loss_sum / total if total else None
        return hits / max(total, 1)


@dataclass(frozen=True)
class Penalty:
    """A term added to the task loss of every batch, and a figure of it (averaged over the
    epoch) that the curve reports under ``key``."""

    key: str
    term: Callable[[], tuple[torch.Tensor, float]]


@dataclass
class TrainingLoop:
    """Epochs over ``training(epoch)`` batches with one optimizer, validated after each.

    ``name`` says whose epochs a cancellation stopped; ``tags`` are fields every curve row
    carries; ``progress`` hears each finished epoch's number.
    """

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    training: Callable[[int], Iterable[Batch]]
    validation: Callable[[], Iterable[Batch]]
    supervision: Supervision
    penalty: Penalty | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    tags: Mapping[str, Any] = field(default_factory=dict)
    should_stop: Callable[[], bool] | None = None
    progress: Callable[[int], None] | None = None

    def validate(self) -> float:
        return self.supervision.score(self.model, self.validation())

    def epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch, validate; the curve's row for it."""
        if self.should_stop is not None and self.should_stop():
            raise Cancelled(f"stopped between {self.name} epochs")
        start, losses, penalties = time.perf_counter(), [], []
        self.model.train()
        for feeds, labels in self.training(epoch):
            task = self.supervision.loss(self.model, feeds, labels)
            loss = task
            if self.penalty is not None:
                term, figure = self.penalty.term()
                loss = task + term
                penalties.append(figure)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            losses.append(float(task.detach()))
        if self.scheduler is not None:
            self.scheduler.step()
        self.model.eval()
        score = self.validate()
        return self.row(epoch, losses, penalties, score, round(time.perf_counter() - start, 3))

    def row(
        self,
        epoch: int,
        losses: list[float],
        penalties: list[float],
        score: float,
        seconds: float,
    ) -> dict[str, Any]:
        row: dict[str, Any] = {"epoch": epoch, **self.tags}
        row["train_loss"] = float(np.mean(losses)) if losses else None
        if self.penalty is not None:
            row[self.penalty.key] = float(np.mean(penalties)) if penalties else None
        row["validation"] = score
        # a supervision that measures no loss on validation (a scripted one) leaves it out
        validation_loss = getattr(self.supervision, "validation_loss", None)
        if validation_loss is not None:
            row["validation_loss"] = validation_loss
        row["seconds"] = seconds
        return row


@dataclass
class Fitted:
    """The curve of a run; with ``keep_best``, the epoch it kept (0: the starting point)."""

    curve: list[dict[str, Any]]
    best_epoch: int | None = None
    best_validation: float | None = None
    selection: str | None = None  # how the kept epoch was chosen, for the step report


def standard_error(score: float, samples: int) -> float:
    """Of a top-1 (a binomial proportion) measured on ``samples`` samples, Agresti-Coull style
    (two hits and two misses added): the plain estimate is 0 at a score of 1.0, which made a
    saturated epoch look infinitely more certain than one that missed a single sample."""
    n = max(samples, 1)
    adjusted = (score * n + 2.0) / (n + 4.0)
    return float(np.sqrt(adjusted * (1.0 - adjusted) / (n + 4.0)))


def fit(
    loop: TrainingLoop,
    epochs: int,
    keep_best: bool = False,
    target: float | None = None,
    prefer_last: bool = False,
) -> Fitted:
    """Run ``epochs`` epochs of ``loop``.

    With ``keep_best`` the starting point is validated too (epoch 0), and the model ends at
    its best validation, so training never makes the result worse than where it began; a
    ``target`` validation score stops it early once reached.

    With ``prefer_last`` as well, the last epoch is kept unless an earlier one validated higher
    by more than one standard error of the score. On a small validation set the highest of a
    few noisy scores is mostly luck (the winner's curse), while the end of an annealed schedule
    is where training is expected to be best: on QAT at W4A4 (150 validation samples) picking
    the highest score cost about a point of test top-1 against keeping the last epoch.
    """
    if target is not None and not keep_best:
        raise ValueError("a target score stops on the best epoch: it needs keep_best")
    if prefer_last and not keep_best:
        raise ValueError("prefer_last chooses between the last and the best epoch: needs keep_best")
    curve: list[dict[str, Any]] = []
    best_state: dict[str, Any] | None = None
    best: dict[str, Any] | None = None
    if keep_best:
        score = loop.validate()
        best_state = copy.deepcopy(loop.model.state_dict())
        best = loop.row(0, [], [], score, 0.0)
        curve.append(best)
    for epoch in range(1, epochs + 1):
        row = loop.epoch(epoch)
        curve.append(row)
        if best is not None and _ranks_higher(row, best):
            best = row
            best_state = copy.deepcopy(loop.model.state_dict())
        if loop.progress is not None:
            loop.progress(epoch)
        if target is not None and best is not None and best["validation"] >= target:
            break
    if best is None:
        return Fitted(curve)
    best_score = best["validation"]
    tied = [row for row in curve if row["validation"] == best_score]
    if len(tied) > 1 and best.get("validation_loss") is not None:
        # validation cannot tell these epochs apart: the loss on the same samples can
        if best_state is not None:
            loop.model.load_state_dict(best_state)
        return Fitted(curve, best["epoch"], best_score, _tie_note(tied, best))
    if prefer_last:
        last = curve[-1]
        noise = standard_error(best_score, loop.supervision.validated)
        if last["validation"] >= best_score - noise:
            note = (
                f"the last epoch ({last['epoch']}): within one standard error ({noise:.3g}) "
                f"of the best validation {best_score:.4g} (epoch {best['epoch']})"
            )
            return Fitted(curve, last["epoch"], last["validation"], note)
    if best_state is not None:
        loop.model.load_state_dict(best_state)
    return Fitted(curve, best["epoch"], best_score, f"the highest validation, {best_score:.4g}")


def _ranks_higher(row: dict[str, Any], best: dict[str, Any]) -> bool:
    """A higher validation score; at an equal score, a lower validation loss."""
    if row["validation"] != best["validation"]:
        return bool(row["validation"] > best["validation"])
    loss, best_loss = row.get("validation_loss"), best.get("validation_loss")
    return loss is not None and best_loss is not None and loss < best_loss


def _tie_note(tied: list[dict[str, Any]], kept: dict[str, Any]) -> str:
    """The step report's word that validation could not choose, and what did."""
    epochs = ", ".join(str(row["epoch"]) for row in tied)
    return (
        f"validation cannot tell epochs apart ({len(tied)} epochs at {kept['validation']:.4g}: "
        f"{epochs}); kept epoch {kept['epoch']}, the lowest validation loss among them "
        f"({kept['validation_loss']:.4g})"
    )
