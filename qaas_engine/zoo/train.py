"""Minimal, seeded training loop for the zoo models.

The models only have to be good enough that quantization error shows up as an accuracy change;
Adam with a cosine-decayed learning rate gets every zoo model past 93% on digits in seconds.
"""

import numpy as np
import torch
from torch import nn

# Epochs per model class name that reach >= 0.93 eval accuracy within the CPU time budget.
DEFAULT_EPOCHS: dict[str, int] = {
    "MobileNetV2Like": 12,
    "ResNetLike": 15,
    "TransformerEncoderLike": 30,
    "SiLUHardSwishNet": 15,
    "PReLUNet": 15,
}


def train_classifier(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int | None = None,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    num_threads: int | None = 1,
) -> nn.Module:
    """Train ``model`` in place with Adam + cross-entropy and return it in eval mode.

    ``epochs=None`` takes the model's entry in :data:`DEFAULT_EPOCHS` (30 when absent). The
    shuffling uses its own seeded generator and ``torch.manual_seed(seed)`` covers anything else
    random (dropout), so the same model, data and seed give the same weights.

    Training runs on ``num_threads`` intra-op threads (restored afterwards; ``None`` leaves the
    setting alone). One thread is the default because these models are too small to gain from
    more: on a 2-core machine two threads were never faster, burned twice the CPU, and under
    contention from other processes slowed training by up to 10x. A fixed thread count also
    keeps the float rounding, hence the trained weights, the same across machines.
    """
    if epochs is None:
        epochs = DEFAULT_EPOCHS.get(type(model).__name__, 30)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
    n = len(xt)
    steps = epochs * ((n + batch_size - 1) // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    loss_fn = nn.CrossEntropyLoss()
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, batch_size):
                idx = perm[start : start + batch_size]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
                sched.step()
    finally:
        torch.set_num_threads(previous_threads)
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (switched to eval mode) on images ``x`` with labels ``y``."""
    model.eval()
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    preds = torch.cat(
        [model(xt[i : i + batch_size]).argmax(1) for i in range(0, len(xt), batch_size)]
    )
    return float((preds.numpy() == np.asarray(y)).mean())
