"""Paired comparisons over seeds: the mean difference and its Student-t confidence interval.

Runs of one seed share the initial labeled set and the model initialisation, so two training modes
(or two methods) of the same seed are a pair; their differences over seeds estimate the effect with
the seed-to-seed spread of everything they share removed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PairedDifference", "paired_difference", "t_quantile"]

# Two-sided 95% quantiles t_{0.975, df} for df = 1..30 (the usual table); beyond, the Cornish-Fisher
# expansion around the normal quantile is exact to 4 digits.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_Z975 = 1.959963984540054


def t_quantile(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (a 95% two-sided interval)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of paired differences with its 95% t-interval (NaN bounds for fewer than 2 pairs)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        """The interval lies wholly above or below 0: the difference is not explained by seed noise."""
        return self.n >= 2 and (self.low > 0 or self.high < 0)


def paired_difference(differences: Sequence[float]) -> PairedDifference:
    """The mean of ``differences`` (one per seed) and its two-sided 95% Student-t interval."""
    values = [float(d) for d in differences if not math.isnan(float(d))]
    n = len(values)
    if n == 0:
        return PairedDifference(math.nan, math.nan, math.nan, 0)
    mean = sum(values) / n
    if n == 1:
        return PairedDifference(mean, math.nan, math.nan, 1)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1) * std / math.sqrt(n)
    return PairedDifference(mean, mean - half, mean + half, n)
