"""The training loop's choice of the epoch it keeps (``quant/training.py``): the best one, or with
``prefer_last`` the last one unless an earlier one validated higher by more than the noise of a
score on that many samples."""

import math
from typing import Any

import pytest
import torch
from torch import nn

from qaas_engine.quant.training import fit, standard_error


class ScriptedLoop:
    """A loop whose epochs set one weight to the epoch's number and validate as scripted, on
    ``samples`` validation samples."""

    def __init__(self, scores: list[float], samples: int) -> None:
        self.model = nn.Linear(1, 1, bias=False)
        nn.init.zeros_(self.model.weight)  # epoch 0
        self.scores = scores
        self.supervision = type("Supervision", (), {"validated": samples})()
        self.progress = None

    def validate(self) -> float:
        return self.scores[0]

    def row(self, epoch: int, losses, penalties, score: float, seconds: float) -> dict[str, Any]:
        return {"epoch": epoch, "validation": score, "seconds": seconds}

    def epoch(self, epoch: int) -> dict[str, Any]:
        with torch.no_grad():
            self.model.weight.fill_(float(epoch))
        return self.row(epoch, [], [], self.scores[epoch], 0.0)

    def kept(self) -> int:
        return int(self.model.weight.item())


def test_standard_error_of_a_top1():
    assert standard_error(0.95, 150) == pytest.approx(math.sqrt(0.95 * 0.05 / 150), rel=0.15)
    # never 0 at a saturated score: 13 of 13 is not certainly better than 12 of 13
    assert standard_error(1.0, 13) > 1.0 - 12 / 13
    assert 0 < standard_error(1.0, 150) < 0.01


def test_one_miss_in_a_small_validation_set_is_noise():
    """13 validation samples: 12/13 at the end after 13/13 earlier is one sample, within the
    noise, so the last epoch is kept (the plain standard error, 0 at 1.0, kept the earlier)."""
    scores = [0.9, 1.0, 12 / 13, 12 / 13]
    loop = ScriptedLoop(scores, samples=13)
    fitted = fit(loop, 3, keep_best=True, prefer_last=True)
    assert loop.kept() == 3 and fitted.best_epoch == 3


@pytest.mark.parametrize(
    ("scores", "prefer_last", "kept"),
    [
        ([0.80, 0.90, 0.94, 0.93], False, 2),  # the highest score
        ([0.80, 0.90, 0.94, 0.93], True, 3),  # 0.01 below the best: within one standard error
        ([0.80, 0.90, 0.96, 0.92], True, 2),  # 0.04 below: the best epoch is kept
        ([0.90, 0.40, 0.30, 0.20], True, 0),  # training made it worse: the starting point
    ],
)
def test_fit_keeps_the_last_epoch_unless_an_earlier_one_is_clearly_better(
    scores, prefer_last, kept
):
    loop = ScriptedLoop(scores, samples=150)
    fitted = fit(loop, len(scores) - 1, keep_best=True, prefer_last=prefer_last)
    assert loop.kept() == kept
    assert fitted.best_epoch == kept
    assert fitted.best_validation == scores[kept]


def test_prefer_last_needs_keep_best():
    with pytest.raises(ValueError, match="keep_best"):
        fit(ScriptedLoop([0.5, 0.6], samples=10), 1, prefer_last=True)


class LossScriptedLoop(ScriptedLoop):
    """As ``ScriptedLoop``, with a scripted validation loss on each curve row."""

    def __init__(self, scores: list[float], losses: list[float], samples: int) -> None:
        super().__init__(scores, samples)
        self.losses = losses

    def row(self, epoch: int, losses, penalties, score: float, seconds: float) -> dict[str, Any]:
        return {**super().row(epoch, losses, penalties, score, seconds),
                "validation_loss": self.losses[epoch]}  # fmt: skip


@pytest.mark.parametrize("prefer_last", [True, False])
def test_a_saturated_validation_picks_the_epoch_by_loss_and_says_so(prefer_last):
    """Validation at 1.0 from epoch 0 on cannot rank epochs: neither the starting point (the
    old strict '>' kept epoch 0) nor blindly the last one, but the lowest validation loss."""
    scores = [1.0] * 6
    losses = [0.40, 0.20, 0.08, 0.05, 0.06, 0.07]
    loop = LossScriptedLoop(scores, losses, samples=150)
    fitted = fit(loop, 5, keep_best=True, prefer_last=prefer_last)
    assert loop.kept() == 3 and fitted.best_epoch == 3
    assert fitted.selection is not None
    assert "cannot tell epochs apart" in fitted.selection
    assert "6 epochs at 1" in fitted.selection and "lowest validation loss" in fitted.selection


def test_loss_breaks_only_ties_at_the_top():
    """A clearly higher score still wins over a lower loss; among the tied best, the loss."""
    scores = [0.80, 0.95, 0.90, 0.95]
    losses = [0.9, 0.30, 0.01, 0.20]
    loop = LossScriptedLoop(scores, losses, samples=10_000)
    fitted = fit(loop, 3, keep_best=True, prefer_last=False)
    assert loop.kept() == 3
    assert "2 epochs at 0.95" in (fitted.selection or "")


def test_the_selection_is_always_explained():
    fitted = fit(ScriptedLoop([0.80, 0.90, 0.96, 0.92], samples=150), 3, keep_best=True,
                 prefer_last=True)  # fmt: skip
    assert fitted.selection == "the highest validation, 0.96"
    fitted = fit(ScriptedLoop([0.80, 0.90, 0.94, 0.93], samples=150), 3, keep_best=True,
                 prefer_last=True)  # fmt: skip
    assert fitted.selection is not None and fitted.selection.startswith("the last epoch (3)")
