"""The shared training loop on a toy model: what QAT and Bayesian Bits rely on it for — the best
epoch kept and restored, a target that stops early, a cancel between epochs that names its
algorithm, an extra loss term that trains and is reported, and the curve's fields in order."""

import pytest
import torch
from torch import nn

from qaas_engine import Cancelled
from qaas_engine.quant.training import Penalty, TrainingLoop, fit, task_loss


class _Labels:
    """Supervision by labels alone: the loop's contract without a sim."""

    signal = "labels"

    def __init__(self, scores: list[float]) -> None:
        self.scores = iter(scores)

    def loss(self, model, feeds, labels):
        return task_loss(model(feeds), None, labels)

    def score(self, model, batches):
        list(batches)
        return next(self.scores)


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def forward(self, feeds):
        return self.linear(feeds["x"])


def _loop(scores: list[float], **options) -> TrainingLoop:
    torch.manual_seed(0)
    model = _Toy()
    batch = ({"x": torch.randn(8, 2)}, torch.randint(0, 2, (8,)))
    return TrainingLoop(
        "Toy",
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        lambda epoch: [batch],
        lambda: [batch],
        _Labels(scores),
        **options,
    )


def test_the_best_epoch_is_kept_and_restored():
    loop = _loop([0.5, 0.6, 0.9, 0.7])
    states = []
    loop.progress = lambda epoch: states.append(
        {k: v.clone() for k, v in loop.model.state_dict().items()}
    )
    fitted = fit(loop, 3, keep_best=True)
    assert (fitted.best_epoch, fitted.best_validation) == (2, 0.9)
    assert [row["epoch"] for row in fitted.curve] == [0, 1, 2, 3]
    assert fitted.curve[0] == {"epoch": 0, "train_loss": None, "validation": 0.5, "seconds": 0.0}
    for name, value in loop.model.state_dict().items():
        torch.testing.assert_close(value, states[1][name], rtol=0, atol=0)  # epoch 2's weights


def test_training_never_ends_worse_than_it_began():
    loop = _loop([0.8, 0.5, 0.6])
    start = {k: v.clone() for k, v in loop.model.state_dict().items()}
    fitted = fit(loop, 2, keep_best=True)
    assert fitted.best_epoch == 0
    for name, value in loop.model.state_dict().items():
        torch.testing.assert_close(value, start[name], rtol=0, atol=0)


def test_a_reached_target_stops_early():
    fitted = fit(_loop([0.5, 0.95, 0.99]), 5, keep_best=True, target=0.9)
    assert [row["epoch"] for row in fitted.curve] == [0, 1]
    with pytest.raises(ValueError, match="keep_best"):
        fit(_loop([0.5]), 1, target=0.9)


def test_a_stop_request_lands_between_epochs_and_names_the_algorithm():
    asked = []
    loop = _loop([0.5, 0.6], should_stop=lambda: len(asked) > 0)
    loop.progress = asked.append
    with pytest.raises(Cancelled, match="between Toy epochs"):
        fit(loop, 3)
    assert asked == [1]


def test_an_extra_loss_term_trains_and_is_reported_per_epoch():
    figures = iter([1.0, 3.0])

    def weight_norm():
        norm = sum(p.pow(2).sum() for p in loop.model.parameters())
        return norm, next(figures)

    loop = _loop([0.5, 0.5], penalty=Penalty("penalty_mean", weight_norm), tags={"phase": "p"})
    curve = fit(loop, 2).curve
    plain = _loop([0.5, 0.5])
    fit(plain, 2)
    norms = [
        sum(float(p.detach().pow(2).sum()) for p in model.parameters())
        for model in (loop.model, plain.model)
    ]
    assert norms[0] < norms[1]  # the term was part of the loss
    assert [list(row) for row in curve] == [
        ["epoch", "phase", "train_loss", "penalty_mean", "validation", "seconds"]
    ] * 2
    assert [row["penalty_mean"] for row in curve] == [1.0, 3.0]
