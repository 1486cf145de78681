"""Evaluation metrics for the fine-tuning tasks, in plain numpy.

GLUE reports accuracy, binary F1 (MRPC, QQP), Matthews correlation (CoLA) and
Pearson/Spearman correlation (STS-B). Each function here returns the same value
as scikit-learn's / scipy's function of the same name (the tests compare them on
random inputs), so results are comparable with published numbers, but robertax
needs neither library at runtime.

All functions take 1-D array-likes and return a Python float.
"""

from __future__ import annotations

import numpy as np


def _pair(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predictions).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"predictions and labels differ in length: {p.shape[0]} vs {y.shape[0]}")
    if p.size == 0:
        raise ValueError("metrics need at least one example")
    return p, y


def accuracy(predictions, labels) -> float:
    """Fraction of predictions equal to the labels (sklearn.metrics.accuracy_score)."""
    p, y = _pair(predictions, labels)
    return float(np.mean(p == y))


def f1(predictions, labels, positive=1) -> float:
    """Binary F1 of the `positive` class (sklearn.metrics.f1_score, average="binary").

    With no positive among predictions and labels F1 is undefined; like sklearn's
    default (zero_division="warn") it is reported as 0.0.
    """
    p, y = _pair(predictions, labels)
    tp = float(np.sum((p == positive) & (y == positive)))
    fp = float(np.sum((p == positive) & (y != positive)))
    fn = float(np.sum((p != positive) & (y == positive)))
    denom = 2 * tp + fp + fn
    return 0.0 if denom == 0 else 2 * tp / denom


def matthews_corrcoef(predictions, labels) -> float:
    """Matthews correlation coefficient, multi-class form (sklearn.metrics.matthews_corrcoef).

    Degenerate inputs (all labels or all predictions one class) give 0.0, as sklearn does.
    """
    p, y = _pair(predictions, labels)
    classes, codes = np.unique(np.concatenate([y, p]), return_inverse=True)
    k = len(classes)
    y_code, p_code = codes[: len(y)], codes[len(y):]
    # Confusion matrix in float64: the products below overflow int64 past ~3e9 examples
    # squared, and sklearn also computes them in floating point.
    cm = np.zeros((k, k), np.float64)
    np.add.at(cm, (y_code, p_code), 1.0)
    t_sum, p_sum = cm.sum(axis=1), cm.sum(axis=0)
    n_correct, n = np.trace(cm), cm.sum()
    cov_ytyp = n_correct * n - t_sum @ p_sum
    cov_ypyp = n * n - p_sum @ p_sum
    cov_ytyt = n * n - t_sum @ t_sum
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return float(cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp))


def pearson(predictions, labels) -> float:
    """Pearson correlation (scipy.stats.pearsonr(...).statistic).

    A constant input has no correlation: the result is nan, as in scipy.
    """
    x, y = _pair(predictions, labels)
    if x.size < 2:
        raise ValueError("pearson needs at least two examples")
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    xm, ym = x - x.mean(), y - y.mean()
    nx, ny = np.linalg.norm(xm), np.linalg.norm(ym)
    if nx == 0 or ny == 0:
        return float("nan")
    # Normalizing before the dot product (as scipy does) keeps |r| <= 1 up to rounding.
    r = float(np.dot(xm / nx, ym / ny))
    return max(-1.0, min(1.0, r))


def rankdata(a) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy.stats.rankdata, method="average")."""
    a = np.asarray(a).reshape(-1)
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    # Tie groups are runs of equal values in sorted order; each gets the mean of its positions.
    starts = np.flatnonzero(np.concatenate([[True], sorted_a[1:] != sorted_a[:-1]]))
    ends = np.append(starts[1:], a.size)  # exclusive
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based positions starts+1 .. ends
    ranks = np.empty(a.size, np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(predictions, labels) -> float:
    """Spearman rank correlation (scipy.stats.spearmanr(...).statistic): Pearson of average ranks."""
    x, y = _pair(predictions, labels)
    return pearson(rankdata(x), rankdata(y))
