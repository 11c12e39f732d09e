"""A small Gaussian-process model over (configuration, fidelity) for the ``gp`` sampler.

Every rung result of every trial is one observation at its point in the unit cube and its fidelity
``f`` (log of the resource, scaled so the first rung is 0 and the full resource 1), so a trial pruned
at the first rung still tells the model about its region, and the model learns from the data how
far a low-fidelity result predicts a full one (the fidelity's own length scale). Values enter as
normal scores of their ranks among the results at the same level (a Gaussian copula per level), so
a function with a huge range, such as a loss that diverges in a corner, does not flatten the rest,
and the rise of every value with training does not read as a difference between levels: ranked
together, the few full-fidelity results all sat far above the rest, and the model explained that
with a short fidelity scale that cut each level off from the others. The kernel is a Matérn 5/2
with one length scale for the configuration and one for the fidelity; a categorical dimension
counts 0 between equal categories and 1 between different ones. Length scales and noise are chosen
by marginal likelihood from a small grid, on a stratified subset of at most FIT_POINTS
observations, so fitting costs the same at 50 and 5,000 observations.

Pure: numpy only, no randomness (the caller draws the candidates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

# Grids for the hyper-parameters, in unit-cube coordinates (configuration, fidelity) and as a
# share of the signal variance (noise).
CONFIG_SCALES = (0.06, 0.12, 0.25, 0.5, 1.0)
FIDELITY_SCALES = (0.3, 1.0, 3.0)
NOISES = (1e-3, 0.03, 0.2)
FIT_POINTS = 48  # observations used to choose the hyper-parameters
MAX_POINTS = 160  # observations the posterior is computed from
JITTER = 1e-8

_SQRT5 = math.sqrt(5.0)
_NORMAL = NormalDist()


def normal_scores(values: Sequence[float]) -> np.ndarray:
    """Each value's rank as a standard-normal quantile (ties share their mean rank)."""
    v = np.asarray(values, dtype=float)
    unique, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    # Each group of equal values: the mean of the ranks it spans.
    mean_rank = np.cumsum(counts) - counts + (counts - 1) / 2.0
    n = len(v)
    quantiles = np.array([_NORMAL.inv_cdf((r + 0.5) / n) for r in mean_rank])
    return quantiles[inverse.reshape(-1)] if len(unique) else np.empty(0)


def level_scores(values: Sequence[float], levels: Sequence[int]) -> np.ndarray:
    """normal_scores taken separately among the values of each level (``levels[i]`` is value i's)."""
    v = np.asarray(values, dtype=float)
    at = np.asarray(levels)
    out = np.empty(len(v))
    for level in np.unique(at):
        mask = at == level
        out[mask] = normal_scores(v[mask].tolist())
    return out


def squared_differences(a: np.ndarray, b: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Per column, the squared differences between the rows of a and b: (columns, len(a), len(b));
    a categorical column counts 0 between equal categories and 1 between different ones."""
    out = np.empty((a.shape[1], len(a), len(b)))
    for d, size in enumerate(sizes):
        if size:
            out[d] = np.floor(a[:, d] * size)[:, None] != np.floor(b[:, d] * size)[None, :]
        else:
            out[d] = (a[:, d][:, None] - b[:, d][None, :]) ** 2
    return out


def matern52_of(parts: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The Matérn 5/2 kernel from squared_differences and per-column length scales."""
    r = np.sqrt(np.tensordot(1.0 / (scales * scales), parts, axes=1))
    return (1.0 + _SQRT5 * r + (5.0 / 3.0) * r * r) * np.exp(-_SQRT5 * r)


def matern52(a: np.ndarray, b: np.ndarray, sizes: Sequence[int], scales: np.ndarray) -> np.ndarray:
    return matern52_of(squared_differences(a, b, sizes), scales)


def _log_likelihood(k: np.ndarray, y: np.ndarray, noise: float) -> float:
    """The log marginal likelihood of y under kernel k plus noise (up to a constant)."""
    try:
        chol = np.linalg.cholesky(k + (noise + JITTER) * np.eye(len(y)))
    except np.linalg.LinAlgError:
        return -math.inf
    alpha = np.linalg.solve(chol, y)
    return float(-0.5 * alpha @ alpha - np.log(np.diag(chol)).sum())


@dataclass(frozen=True)
class Model:
    """A fitted posterior: predict the normal score at new (configuration, fidelity) points."""

    points: np.ndarray  # (n, d + 1): configuration, then fidelity
    sizes: tuple[int, ...]  # per column: number of categories, 0 for numeric (fidelity: 0)
    scales: np.ndarray  # per column length scale
    noise: float
    y: np.ndarray  # the observed normal scores
    mean: float
    alpha: np.ndarray  # K^-1 (y - mean)
    k_inv: np.ndarray

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation at the rows of x."""
        ks = matern52(x, self.points, self.sizes, self.scales)
        mu = self.mean + ks @ self.alpha
        var = 1.0 - ((ks @ self.k_inv) * ks).sum(axis=1)
        return mu, np.sqrt(np.maximum(var, 1e-12))

    def predict_mean(self, x: np.ndarray) -> np.ndarray:
        """Posterior mean only (no variance: a fraction of the cost)."""
        return np.asarray(self.mean + matern52(x, self.points, self.sizes, self.scales) @ self.alpha)

    def with_believed(self, x: np.ndarray) -> Model:
        """The model with its own mean prediction added as an observation at each row of x: pending
        trials (started, not reported) lower the uncertainty where they are, so proposals made before
        they report spread out (the "kriging believer" of batch Bayesian optimisation)."""
        if not len(x):
            return self
        mu = self.predict_mean(x)
        # The inverse of the grown kernel matrix by blocks (Schur complement): O(n^2 p), not O(n^3).
        b = matern52(self.points, x, self.sizes, self.scales)
        c = matern52(x, x, self.sizes, self.scales) + (self.noise + JITTER) * np.eye(len(x))
        a_inv_b = self.k_inv @ b
        s_inv = np.linalg.pinv(c - b.T @ a_inv_b)
        corner = -a_inv_b @ s_inv
        k_inv = np.block([[self.k_inv - corner @ a_inv_b.T, corner], [corner.T, s_inv]])
        y = np.concatenate([self.y, mu])
        points = np.vstack([self.points, x])
        return Model(
            points, self.sizes, self.scales, self.noise, y, self.mean, k_inv @ (y - self.mean), k_inv
        )


def _posterior(
    points: np.ndarray, y: np.ndarray, sizes: tuple[int, ...], scales: np.ndarray, noise: float, mean: float
) -> Model:
    k = matern52(points, points, sizes, scales) + (noise + JITTER) * np.eye(len(points))
    try:
        k_inv = np.linalg.inv(k)
    except np.linalg.LinAlgError:
        k_inv = np.linalg.pinv(k)
    return Model(points, sizes, scales, noise, y, mean, k_inv @ (y - mean), k_inv)


def fit(points: np.ndarray, y: np.ndarray, sizes: Sequence[int]) -> Model:
    """The posterior for observations ``y`` (normal scores) at ``points`` (n, d + 1), with the grid
    point of highest marginal likelihood on a stratified subset."""
    sizes = (*sizes, 0)
    n, cols = points.shape
    order = np.argsort(y, kind="stable")
    # The subsets: evenly spread over the ranking, so good and bad regions are both represented.
    fit_idx = order[np.unique(np.linspace(0, n - 1, min(n, FIT_POINTS)).round().astype(int))]
    # The posterior: every one of the best MAX_POINTS / 2, where proposals matter, and the rest spread.
    top = MAX_POINTS // 2
    if n <= MAX_POINTS:
        keep_idx = order
    else:
        rest = order[: n - top]
        keep_idx = np.concatenate(
            [
                rest[np.unique(np.linspace(0, len(rest) - 1, MAX_POINTS - top).round().astype(int))],
                order[n - top :],
            ]
        )
    fx, fy = points[fit_idx], y[fit_idx]
    mean = float(fy.mean())
    parts = squared_differences(fx, fx, sizes)
    # One grid at a time (configuration, fidelity, noise), each at the best of the others so far,
    # twice over: 22 likelihoods instead of the 45 of the whole grid, to the same choice nearly always.
    grids = (CONFIG_SCALES, FIDELITY_SCALES, NOISES)
    choice = [CONFIG_SCALES[2], FIDELITY_SCALES[1], NOISES[1]]
    seen: dict[tuple[float, ...], float] = {}
    for _ in range(2):
        for g, grid in enumerate(grids):
            scored = []
            for value in grid:
                trial = (*choice[:g], value, *choice[g + 1 :])
                if trial not in seen:
                    scales = np.array([trial[0]] * (cols - 1) + [trial[1]])
                    seen[trial] = _log_likelihood(matern52_of(parts, scales), fy - mean, trial[2])
                scored.append((seen[trial], -grid.index(value), value))
            choice[g] = max(scored)[2]
    scales, noise = np.array([choice[0]] * (cols - 1) + [choice[1]]), choice[2]
    return _posterior(points[keep_idx], y[keep_idx], sizes, scales, noise, float(y[keep_idx].mean()))


def _phi(z: np.ndarray) -> np.ndarray:
    return np.asarray(np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi))


def _big_phi(z: np.ndarray) -> np.ndarray:
    # erf by Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7): numpy has no erf.
    x = np.abs(z) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-x * x)
    return np.asarray(0.5 * (1.0 + np.sign(z) * erf))


def expected_improvement(mu: np.ndarray, sd: np.ndarray, best: float) -> np.ndarray:
    """E[max(Y - best, 0)] for Y ~ N(mu, sd^2) (higher is better)."""
    z = (mu - best) / sd
    return np.asarray(sd * (z * _big_phi(z) + _phi(z)))
