"""The forecast's small statistics helpers (private module, tested directly)."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel.ledger._forecast_stats import (
    EXACT_SUM_MIN,
    cornish_fisher,
    exact_sum_limit,
    moments,
    quantile,
    spearman,
    sum_of_draws,
)


def test_quantile_interpolates_like_numpy_default() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert quantile(values, 0.0) == 1.0
    assert quantile(values, 1.0) == 4.0
    assert quantile(values, 0.5) == 2.5
    assert quantile(values, 0.9) == pytest.approx(3.7)
    assert quantile([5.0], 0.3) == 5.0


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.floats(0, 1), st.floats(0, 1))
def test_quantile_is_monotone(values: list[float], a: float, b: float) -> None:
    s = sorted(values)
    lo, hi = min(a, b), max(a, b)
    assert s[0] <= quantile(s, lo) <= quantile(s, hi) <= s[-1]


def test_moments_of_a_known_sample() -> None:
    m = moments([1.0, 2.0, 3.0, 4.0, 10.0])
    assert m.mean == 4.0
    assert m.sd == pytest.approx(statistics.pstdev([1.0, 2.0, 3.0, 4.0, 10.0]))
    assert m.skew > 1
    assert moments([2.0, 2.0]).sd == 0.0


def test_cornish_fisher_reduces_to_normal_without_skew() -> None:
    for z in (-1.28, 0.0, 1.28):
        assert cornish_fisher(z, 0.0, 0.0) == z
    # Right skew pushes both tails to the right of the normal's... and the median left of the mean.
    assert cornish_fisher(0.0, 1.0, 0.0) < 0.0
    assert cornish_fisher(1.28, 0.5, 0.0) > 1.28


def test_spearman() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)


def test_exact_sum_limit_grows_with_skew() -> None:
    assert exact_sum_limit(moments([1.0, 2.0, 3.0])) == EXACT_SUM_MIN
    heavy = [0.0] * 999 + [1000.0]
    assert exact_sum_limit(moments(heavy)) > EXACT_SUM_MIN


def test_sum_of_draws_both_paths_have_the_right_mean() -> None:
    rng = random.Random(0)
    pool = [rng.expovariate(1.0) for _ in range(1000)]
    m = moments(pool)
    small = [sum_of_draws(rng, pool, 100, m) for _ in range(2000)]
    big = [sum_of_draws(rng, pool, 100_000, m) for _ in range(2000)]
    assert statistics.fmean(small) == pytest.approx(100 * m.mean, rel=0.02)
    assert statistics.fmean(big) == pytest.approx(100_000 * m.mean, rel=0.002)
    assert statistics.pstdev(big) == pytest.approx(math.sqrt(100_000) * m.sd, rel=0.1)
