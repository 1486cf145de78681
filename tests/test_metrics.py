"""The numpy metrics equal scikit-learn's and scipy's on random and degenerate inputs."""

import math
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from robertax.tasks import metrics


@pytest.fixture(params=range(5))
def rng(request):
    return np.random.default_rng(request.param)


def test_accuracy_and_f1_match_sklearn(rng):
    n = int(rng.integers(1, 300))
    y = rng.integers(0, 2, n)
    p = np.where(rng.random(n) < 0.7, y, 1 - y)
    assert metrics.accuracy(p, y) == pytest.approx(skm.accuracy_score(y, p), abs=1e-12)
    assert metrics.f1(p, y) == pytest.approx(skm.f1_score(y, p), abs=1e-12)


def test_f1_without_positives_is_zero_like_sklearn():
    y = p = np.zeros(7, int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that F1 is ill-defined
        assert metrics.f1(p, y) == skm.f1_score(y, p) == 0.0


@pytest.mark.parametrize("classes", [2, 3])
def test_mcc_matches_sklearn(rng, classes):
    n = int(rng.integers(2, 400))
    y = rng.integers(0, classes, n)
    p = np.where(rng.random(n) < 0.6, y, rng.integers(0, classes, n))
    assert metrics.matthews_corrcoef(p, y) == pytest.approx(skm.matthews_corrcoef(y, p), abs=1e-12)


@pytest.mark.parametrize("p, y", [
    ([1, 1, 1, 1], [0, 1, 1, 0]),   # constant predictions
    ([0, 1, 0, 1], [1, 1, 1, 1]),   # constant labels
    ([1, 1], [1, 1]),               # both constant
])
def test_mcc_degenerate_is_zero_like_sklearn(p, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = skm.matthews_corrcoef(y, p)
    assert metrics.matthews_corrcoef(p, y) == expected == 0.0


def test_mcc_perfect_and_inverted():
    y = np.array([0, 1, 1, 0, 1])
    assert metrics.matthews_corrcoef(y, y) == pytest.approx(1.0)
    assert metrics.matthews_corrcoef(1 - y, y) == pytest.approx(-1.0)


def test_pearson_spearman_match_scipy(rng):
    n = int(rng.integers(3, 500))
    y = rng.uniform(0, 5, n)
    p = y + rng.normal(0, 1.5, n)
    assert metrics.pearson(p, y) == pytest.approx(stats.pearsonr(p, y).statistic, abs=1e-12)
    assert metrics.spearman(p, y) == pytest.approx(stats.spearmanr(p, y).statistic, abs=1e-12)


def test_spearman_with_ties_matches_scipy(rng):
    # STS-B gold scores repeat a lot (multiples of 0.2); predictions rounded to tie too.
    n = 300
    y = rng.integers(0, 26, n) / 5.0
    p = np.round(y + rng.normal(0, 1.0, n), 1)
    assert metrics.spearman(p, y) == pytest.approx(stats.spearmanr(p, y).statistic, abs=1e-12)
    np.testing.assert_array_equal(metrics.rankdata(p), stats.rankdata(p))


def test_correlation_of_constant_is_nan_like_scipy():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(stats.pearsonr([1, 2, 3], [2, 2, 2]).statistic)
    assert math.isnan(metrics.pearson([1, 2, 3], [2, 2, 2]))
    assert math.isnan(metrics.spearman([1, 2, 3], [2, 2, 2]))


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in length"):
        metrics.accuracy([0, 1], [0, 1, 1])
