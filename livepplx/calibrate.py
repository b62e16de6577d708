"""Thresholds from data: DeepConf's percentile rule from unlabelled warm-up traces.

>>> deepconf_threshold([10.0, 12.0, 14.0, 16.0, 18.0], eta=10)   # keep the top 10%
17.2
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["deepconf_threshold"]


def deepconf_threshold(lowest_group_confidences: Sequence[float], eta: float = 10.0) -> float:
    """DeepConf's online stop threshold: ``s = percentile(warm-up lowest group confidences, 100 - eta)``.

    Args:
        lowest_group_confidences: one value per warm-up trace (the paper runs 16).
        eta: the percentage of warm-up traces kept: 10 is DeepConf-low (aggressive),
            90 DeepConf-high (conservative).

    A later trace stops once its (full-window) group confidence drops below ``s``:
    ``Trigger(group_confidence_below(s), stop=True)``.
    """
    values = np.asarray(list(lowest_group_confidences), dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("deepconf_threshold() needs at least one warm-up trace with a finite lowest group confidence")
    if not 0.0 < eta < 100.0:
        raise ValueError(f"eta must be a percentage in (0, 100), got {eta}")
    return float(np.percentile(values, 100.0 - eta))
