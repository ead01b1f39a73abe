"""Accuracy and fidelity, accumulated batch by batch so no output set is held whole.

Fidelity compares a model's first output with the float model's: SQNR in dB, top-1 agreement
(argmax over the last axis), and mean per-sample cosine similarity.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# An exact match has infinite SQNR; JSON has no infinity, so it is reported at this ceiling.
SQNR_CEILING_DB = 200.0


class FidelityMeter:
    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0
        self.agree = 0
        self.positions = 0
        self.cosine_sum = 0.0
        self.samples = 0
        self.correct = 0
        self.labelled = 0
        self.max_abs_diff = 0.0

    def update(self, reference: np.ndarray, test: np.ndarray, labels: np.ndarray | None) -> None:
        reference = np.asarray(reference, dtype=np.float64)
        test = np.asarray(test, dtype=np.float64)
        if reference.shape != test.shape:
            raise ValueError(f"output shapes differ: {reference.shape} vs {test.shape}")
        diff = reference - test
        self.signal += float(np.sum(reference**2))
        self.noise += float(np.sum(diff**2))
        self.max_abs_diff = max(self.max_abs_diff, float(np.max(np.abs(diff), initial=0.0)))
        if reference.ndim >= 1 and reference.shape[-1] > 1:
            self.agree += int(np.sum(reference.argmax(-1) == test.argmax(-1)))
            self.positions += int(np.prod(reference.shape[:-1]))
        rows_ref = (
            reference.reshape(reference.shape[0], -1) if reference.ndim else reference.reshape(1, 1)
        )
        rows_test = test.reshape(rows_ref.shape)
        norms = np.linalg.norm(rows_ref, axis=1) * np.linalg.norm(rows_test, axis=1)
        dots = np.sum(rows_ref * rows_test, axis=1)
        cos = np.where(norms > 0, dots / np.maximum(norms, 1e-30), 1.0)
        self.cosine_sum += float(np.sum(cos))
        self.samples += rows_ref.shape[0]
        if labels is not None:
            predictions = test.reshape(len(labels), -1, test.shape[-1]).argmax(-1)[:, 0]
            self.correct += int(np.sum(predictions == labels))
            self.labelled += len(labels)

    def sqnr_db(self) -> float:
        if self.noise == 0:
            return SQNR_CEILING_DB
        if self.signal == 0:
            return -SQNR_CEILING_DB
        return min(SQNR_CEILING_DB, 10 * math.log10(self.signal / self.noise))

    def result(self, *, reference_itself: bool = False) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        if self.labelled:
            metrics["top1"] = self.correct / self.labelled
        metrics["sqnr_db"] = None if reference_itself else round(self.sqnr_db(), 3)
        metrics["top1_agreement"] = self.agree / self.positions if self.positions else None
        metrics["cosine"] = self.cosine_sum / self.samples if self.samples else None
        metrics["samples"] = self.samples
        return metrics
