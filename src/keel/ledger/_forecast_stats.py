"""Small statistics for the forecast, in floats, with no third-party dependency.

Private to ``keel.ledger.forecast``. Everything here is deterministic given a ``random.Random``;
nothing touches Decimal money (the caller converts at its edges).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Moments",
    "cornish_fisher",
    "moments",
    "quantile",
    "spearman",
    "sum_of_draws",
]

#: Sums of at most this many draws are always computed exactly by resampling.
EXACT_SUM_MIN = 2_000
#: Sums of more draws than this always use the Cornish–Fisher approximation (time bound).
EXACT_SUM_MAX = 20_000
#: The approximation is used only once the sum's own skewness is at most this.
CF_MAX_SUM_SKEW = 0.25


@dataclass(frozen=True, slots=True)
class Moments:
    """Mean, standard deviation, skewness and excess kurtosis of a sample (population form)."""

    mean: float
    sd: float
    skew: float
    exkurt: float


def moments(values: Sequence[float]) -> Moments:
    """The first four standardized moments of ``values`` (non-empty). Zero spread gives 0, 0."""
    n = len(values)
    mean = math.fsum(values) / n
    m2 = math.fsum((v - mean) ** 2 for v in values) / n
    if m2 <= 0.0:
        return Moments(mean, 0.0, 0.0, 0.0)
    m3 = math.fsum((v - mean) ** 3 for v in values) / n
    m4 = math.fsum((v - mean) ** 4 for v in values) / n
    return Moments(mean, math.sqrt(m2), m3 / m2**1.5, m4 / (m2 * m2) - 3.0)


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0 ≤ q ≤ 1) of an ascending, non-empty sequence, by linear interpolation
    between order statistics (Hyndman–Fan type 7, the default of R and NumPy)."""
    n = len(sorted_values)
    h = (n - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


def cornish_fisher(z: float, skew: float, exkurt: float) -> float:
    """The standardized quantile matching the normal quantile ``z`` for a distribution with the
    given skewness and excess kurtosis (Cornish–Fisher expansion to the second order)."""
    z2 = z * z
    return (
        z
        + (z2 - 1.0) * skew / 6.0
        + (z2 * z - 3.0 * z) * exkurt / 24.0
        - (2.0 * z2 * z - 5.0 * z) * skew * skew / 36.0
    )


def exact_sum_limit(m: Moments) -> int:
    """Largest number of draws whose sum is computed by resampling rather than approximated.

    The central limit theorem is poor for heavy-tailed costs: the skewness of a sum of ``k`` draws
    is ``skew / √k``. Resampling is used until that falls to ``CF_MAX_SUM_SKEW`` (and always up to
    ``EXACT_SUM_MIN`` draws), bounded by ``EXACT_SUM_MAX`` for time.
    """
    needed = math.ceil((abs(m.skew) / CF_MAX_SUM_SKEW) ** 2)
    return min(EXACT_SUM_MAX, max(EXACT_SUM_MIN, needed))


def sum_of_draws(rng: random.Random, pool: Sequence[float], k: int, m: Moments) -> float:
    """One random draw of the sum of ``k`` independent draws from ``pool`` (whose moments are
    ``m``): exact resampling when ``k`` is within :func:`exact_sum_limit`, otherwise the normal
    approximation corrected for skewness and kurtosis (Cornish–Fisher), floored at zero."""
    if k <= exact_sum_limit(m):
        return math.fsum(rng.choices(pool, k=k))
    root = math.sqrt(k)
    z = cornish_fisher(rng.gauss(0.0, 1.0), m.skew / root, m.exkurt / k)
    return max(0.0, k * m.mean + root * m.sd * z)


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        mid = (i + j) / 2.0
        for k in range(i, j + 1):
            ranks[order[k]] = mid
        i = j + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get mid-ranks); 0.0 when either side is constant."""
    if len(xs) != len(ys) or len(xs) < 2:
        return 0.0
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = math.fsum(rx) / len(rx), math.fsum(ry) / len(ry)
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = math.fsum((a - mx) ** 2 for a in rx)
    syy = math.fsum((b - my) ** 2 for b in ry)
    if sxx <= 0.0 or syy <= 0.0:
        return 0.0
    return sxy / math.sqrt(sxx * syy)
