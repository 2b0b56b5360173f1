"""Paired bootstrap confidence intervals over queries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high}


def bootstrap_mean(values: np.ndarray, samples: int = 1000, confidence: float = 0.95,
                   seed: int = 0) -> Interval:
    """Percentile bootstrap CI of the mean of per-query values."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return Interval(0.0, 0.0, 0.0)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, values.size, size=(samples, values.size))
    means = values[index].mean(axis=1)
    alpha = (1 - confidence) / 2
    return Interval(float(values.mean()), float(np.quantile(means, alpha)),
                    float(np.quantile(means, 1 - alpha)))


def paired_bootstrap_difference(a: np.ndarray, b: np.ndarray, samples: int = 1000,
                                confidence: float = 0.95, seed: int = 0) -> Interval:
    """CI of mean(a - b) where a[i] and b[i] are two models' scores on the same query i."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal shapes, got {a.shape} and {b.shape}")
    return bootstrap_mean(a - b, samples, confidence, seed)
