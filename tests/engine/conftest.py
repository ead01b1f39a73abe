"""Fixtures shared by the engine tests: models trained once per session, not once per file."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from qaas_engine.zoo import DigitsSplits, load_digits_splits, train_classifier
from qaas_engine.zoo.imbalance import DepthwiseReLUNet


@pytest.fixture(scope="session")
def digits_depthwise_net() -> Callable[[], tuple[DigitsSplits, nn.Module]]:
    """Digits and a DepthwiseReLUNet trained on them for 15 epochs from ``torch.manual_seed(0)``:
    four files start from this same net, and training it is most of their setup time.

    Each call returns a fresh copy (callers alter it in place) and leaves torch's global RNG where
    training it in place would have, so what a caller draws afterwards is unchanged too."""
    digits = load_digits_splits(seed=0)
    torch.manual_seed(0)
    trained = train_classifier(DepthwiseReLUNet(), digits.x_train, digits.y_train, epochs=15)
    rng_after_training = torch.get_rng_state()

    def fresh() -> tuple[DigitsSplits, nn.Module]:
        torch.set_rng_state(rng_after_training)
        return digits, copy.deepcopy(trained)

    return fresh
