"""What to try next: random, quasi-random (Latin hypercube) and model-based (tpe, gp) proposals.

Every sampler works in the unit cube: a point ``u`` in [0, 1)^d maps to a configuration through each
parameter's own scale (``Param.from_unit``: log scale for log types, the grid for quantised types,
an index for choices), so every proposal is a value the search space can take.

The model-based sampler is a Parzen-estimator density ratio in the manner of TPE and BOHB, fit on
ASHA's rung results: trials are ranked as ASHA ranks them, by the highest rung each reached and then
by its value at that rung (values compared only at equal resource), the best ``gamma`` share forms
the good density l and the rest the bad density g, and the proposal is the candidate drawn from l
that maximises ``l(u) / g(u)``. So a trial that reached a higher rung always counts as better than
one pruned below it, and every report informs the model, the sparse top rung included. A density
of many points gives each point its own kernel width per dimension, the larger gap to its
neighbours along that dimension (the adaptive Parzen rule of hyperopt's TPE): narrow where good
trials gather, wide around an isolated one. Once many trials have reported, a share of proposals
is a local step around one of the best trials (as a trust region does), which refines a basin
faster than the density alone. A quasi-random start and a share of random proposals keep it from
collapsing. Proposals never repeat a configuration already tried while the space has others.

The ``gp`` sampler proposes as ``tpe`` until 5 trials per parameter have reported (half the "10 d"
rule of thumb for fitting a Gaussian process, chosen by measurement), then takes the candidate of
highest expected improvement at the first rung under a Gaussian process over every rung result
(gp.py), trials started but not reported counted at the model's own prediction. The first rung is
where a new trial is judged first, and the one level every trial has reached: at full fidelity,
where few trials arrive, a region pruned at the first rung still looks unexplored, and expected
improvement there kept sending trials back into it (digits, benchmarks/README.md).

Pure: the inputs are the trials so far and a generator seeded by (seed, trial index), so the same
observations always give the same proposal.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np

from . import gp
from .asha import rung_records, score
from .config import Mode, SamplerName
from .space import SearchSpace
from .trials import Report

SAMPLERS: tuple[SamplerName, ...] = get_args(SamplerName)

# Latin-hypercube block: every block of this many consecutive trials covers each dimension's strata.
QMC_BLOCK = 16
# TPE settings (BOHB's and Optuna's published defaults where they exist).
GAMMA = 0.15  # share of observations that count as good
RANDOM_FRACTION = 0.1  # proposals drawn at random, so the model never collapses
CANDIDATES = 32  # candidates drawn from the good density per proposal
MIN_BANDWIDTH = 0.01  # in unit-cube coordinates (Optuna's floor: 1/100 of the range)
CHOICE_KEEP = 0.8  # a choice's kernel: this much mass on its own category, the rest spread evenly
PRIOR_WEIGHT = 1.0  # weight of the uniform prior in each density
DUPLICATE_RETRIES = 20
# Chosen on seeds 100-129 and checked on 200-259 of benchmarks/search_quality.py (README).
DATA_MIN_POINTS = 20  # a density of this many points takes each point's widths from its neighbours
SAMPLE_WIDEN = 2.0  # ...and its candidates drawn with kernels this much wider (as BOHB's factor 3)
FEW_POINTS_WIDTH = 0.3  # below DATA_MIN_POINTS, every kernel is this times n^(-1/(d+4)) wide
LOCAL_MIN_TRIALS = 60  # trials with reports before local steps start
LOCAL_FRACTION = 0.3  # then this share of the model's proposals is a local step
LOCAL_TOP = 3  # around one of this many best trials
LOCAL_SCALE = 0.5  # a step's spread per dimension, in multiples of the good trials' spread
LOCAL_MIN_STEP = 0.005  # in unit-cube coordinates
# The gp sampler: candidates for its expected improvement, uniform and around the best trials.
GP_UNIFORM_CANDIDATES = 256
GP_TOP = 5  # trials with the best predicted full-fidelity value
GP_LOCAL_SCALES = (0.01, 0.03, 0.1, 0.3)  # Gaussian steps around each, in unit-cube coordinates
GP_LOCAL_CANDIDATES = 8  # per trial and scale
# Reported trials per dimension before the GP takes over from tpe. Of 3, 5, 7 and 10 (the "10 d"
# rule for fitting a GP), 5 ended closest to the optimum at 2 workers, and closer than 10 in 10 of
# 12 cells on held-out seeds at 2 and 8 workers (benchmarks/README.md).
GP_POINTS_PER_DIMENSION = 5
# Expected improvement over the incumbent plus this (in normal scores): of 0, 0.25, 0.5, 0.75 and 1,
# 0.5 ended closest to the optimum over the six synthetic cells (benchmarks/README.md); at 0 the GP
# crept along one valley in small steps, at 1 it spent the budget where it knew least.
GP_XI = 0.5
FIRST_RUNG = 0.0  # the fidelity coordinate of the first rung, where the GP's proposals are judged
GP_SHORTLIST = 64  # trials whose first-rung value is predicted, best latest results first
GP_SNAPPED = 16  # best raw candidates snapped to the space and re-scored


@dataclass(frozen=True)
class Observed:
    """A trial as the samplers see it: its configuration and its reports (in time order).

    ``index``: the trial's index, when the caller has one; the sampler then keeps what it derives
    from the trial (its unit point, its key, the level it reached) until its reports change, so a
    proposal at 1,000 trials does not re-derive 1,000 trials.
    """

    params: dict[str, Any]
    reports: tuple[Report, ...]
    index: int | None = None


@dataclass(frozen=True)
class _Derived:
    """What a proposal needs from one trial; valid while its params, reports and levels are the same."""

    params: dict[str, Any]
    reports: tuple[Report, ...]
    levels: tuple[float, ...]
    key: str
    unit: list[float] | None
    scores: tuple[float, ...]  # its score at each level it reached, the lowest first

    @property
    def standing(self) -> tuple[int, float] | None:
        """The highest level reached and the score there (levels are reached in order)."""
        return (len(self.scores) - 1, self.scores[-1]) if self.scores else None


def startup_trials(space: SearchSpace) -> int:
    """Quasi-random proposals before the model takes over (few: budgets of tens of trials are common)."""
    return max(5, len(space) + 1)


def min_observations(space: SearchSpace) -> int:
    """Trials with rung results needed before the model is fit."""
    return max(4, len(space) // 2 + 2)


def latin_hypercube_point(dims: int, index: int, seed: int) -> list[float]:
    """Point ``index`` of a sequence of Latin hypercubes, one per block of QMC_BLOCK indices."""
    block, position = divmod(index, QMC_BLOCK)
    point = []
    for d in range(dims):
        perm = list(range(QMC_BLOCK))
        random.Random(f"hpo-lhs:{seed}:{block}:{d}").shuffle(perm)
        jitter = random.Random(f"hpo-lhs-jitter:{seed}:{index}:{d}").random()
        point.append((perm[position] + jitter) / QMC_BLOCK)
    return point


def _key(params: dict[str, Any]) -> str:
    """A configuration's identity. Integral numbers as floats: a value the sampler proposed as 0.0
    comes back as 0 once stored in the API (JSON), and must still count as tried."""

    def same(v: Any) -> Any:
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    return repr(sorted((k, same(v)) for k, v in params.items()))


def _unit_of(space: SearchSpace, params: dict[str, Any]) -> list[float] | None:
    try:
        return [p.to_unit(params[p.name]) for p in space.params]
    except (KeyError, ValueError, TypeError):
        return None


def neighbour_gaps(points: np.ndarray) -> np.ndarray:
    """For each point and dimension, the larger of the gaps to its neighbours along that dimension,
    the ends of [0, 1] counting as neighbours: (n, d) kernel widths."""
    out = np.empty(points.shape)
    for d in range(points.shape[1]):
        order = np.argsort(points[:, d], kind="stable")
        xs = np.concatenate(([0.0], points[order, d], [1.0]))
        out[order, d] = np.maximum(xs[1:-1] - xs[:-2], xs[2:] - xs[1:-1])
    return out


class _Parzen:
    """A product of per-dimension densities on [0, 1]: Gaussian kernels for numeric parameters,
    smoothed frequencies for choices, mixed with a uniform prior. Vectorised: scoring a batch of
    candidates against n points costs one (candidates x n) array per dimension."""

    def __init__(self, space: SearchSpace, points: Sequence[list[float]]) -> None:
        self.space = space
        self.points = np.asarray(points, dtype=float).reshape(len(points), len(space))
        n = max(len(points), 1)
        d = len(space)
        # Many points: each kernel as wide as the gaps to its neighbours, so the density narrows where
        # good trials gather (8 workers: refining Branin's and Hartmann's basins) and stays wide
        # around a lone one; candidates drawn wider still. Few points (2 workers, ~40 trials): one
        # fixed width of 0.3 n^(-1/(d+4)) everywhere, as a fit to so few collapsed onto one basin in
        # the measurements. Floored so a kernel never degenerates.
        if len(points) >= DATA_MIN_POINTS:
            widths, self.widen = neighbour_gaps(self.points), SAMPLE_WIDEN
        else:
            widths = np.full(self.points.shape, FEW_POINTS_WIDTH * float(n) ** (-1 / (d + 4)))
            self.widen = 1.0
        self.bandwidths = np.clip(widths, MIN_BANDWIDTH, 0.5)  # (points, dimensions)
        self.total = len(points) + PRIOR_WEIGHT
        self.sizes = [len(p.choices) if p.type == "choice" else 0 for p in space.params]

    def sample(self, rng: random.Random) -> list[float]:
        pick = int(rng.uniform(0, self.total))
        if pick < len(self.points):
            return [
                self._around(rng, d, float(x), float(self.bandwidths[pick, d]))
                for d, x in enumerate(self.points[pick])
            ]
        return [rng.random() for _ in self.space.params]

    def _around(self, rng: random.Random, d: int, x: float, bandwidth: float) -> float:
        if self.sizes[d]:
            # Keep the category most of the time; otherwise any category.
            return x if rng.random() < CHOICE_KEEP else rng.random()
        for _ in range(8):
            y = rng.gauss(x, self.widen * bandwidth)
            if 0.0 <= y < 1.0:
                return y
        return min(max(x, 0.0), math.nextafter(1.0, 0.0))

    def log_density(self, candidates: Sequence[list[float]]) -> list[float]:
        """log of the density at each candidate."""
        c = np.asarray(candidates, dtype=float)
        kernel = np.ones((len(c), len(self.points)))
        for d, size in enumerate(self.sizes):
            a, b = c[:, d][:, None], self.points[:, d][None, :]
            if size:
                same = np.floor(a * size) == np.floor(b * size)
                kernel *= np.where(same, CHOICE_KEEP * size, 0.0) + (1 - CHOICE_KEEP)
            else:
                bw = self.bandwidths[:, d][None, :]
                z = (a - b) / bw
                kernel *= np.exp(-0.5 * z * z) / (bw * math.sqrt(2 * math.pi))
        # The uniform prior has density 1 everywhere.
        density = (PRIOR_WEIGHT + kernel.sum(axis=1)) / self.total
        return [float(v) for v in np.log(density)]


class Sampler:
    """Proposes trial configurations for one study."""

    def __init__(
        self,
        space: SearchSpace,
        kind: SamplerName,
        seed: int,
        mode: Mode,
        priors: Sequence[dict[str, Any]] = (),
    ) -> None:
        self.space = space
        self.kind = kind
        self.seed = seed
        self.mode = mode
        self.priors = tuple(priors)
        self.sizes = [len(p.choices) if p.type == "choice" else 0 for p in space.params]
        self._derived: dict[int, _Derived] = {}
        # The last GP fit and what it was fit on: the proposals of one decision, and of decisions
        # between which no rung result arrived, share one history, hence one fit (gp.fit is
        # deterministic, so reusing it is exactly a refit).
        self._fit: tuple[bytes, bytes, tuple[int, ...], gp.Model] | None = None

    def _rng(self, index: int) -> random.Random:
        return random.Random(f"hpo:{self.seed}:{index}")

    def random_params(self, index: int) -> dict[str, Any]:
        return self.space.sample(self._rng(index))

    def quasi_random(self, index: int) -> dict[str, Any]:
        return self.space.from_unit(latin_hypercube_point(len(self.space), index, self.seed))

    def propose(
        self, index: int, tried: Sequence[Observed], rungs: Sequence[float], max_resource: float
    ) -> dict[str, Any]:
        """Trial ``index``'s configuration given every trial tried so far: the prior configurations
        first, in order (OTX's prior_hyper_parameters), or without them the defaults for trial 0; then
        the sampler's proposals, which see the priors among the trials tried."""
        if index < len(self.priors):
            return dict(self.priors[index])
        if index == 0:
            return self.space.initial()
        if self.kind == "random":
            return self.random_params(index)
        levels = (*rungs, max_resource)
        derived = [self._derive(t, levels) for t in tried]
        seen = {d.key for d in derived}
        if self.kind == "qmc" or index < startup_trials(self.space):
            return self._unseen(self.quasi_random(index), index, seen)
        rng = self._rng(index)
        if rng.random() < RANDOM_FRACTION:
            return self._unseen(self.space.sample(rng), index, seen)
        if self.kind == "gp" and sum(
            d.standing is not None for d in derived
        ) >= GP_POINTS_PER_DIMENSION * len(self.space):
            gp_proposal = self._gp_based(rng, derived, levels, seen)
            if gp_proposal is None:
                return self._unseen(self.quasi_random(index), index, seen)
            return gp_proposal
        ranked = self._ranked(derived)
        if ranked is not None and len(ranked) >= LOCAL_MIN_TRIALS and rng.random() < LOCAL_FRACTION:
            step = self._local_step(rng, ranked, seen)
            if step is not None:
                return step
        proposal = self._model_based(rng, ranked, seen)
        if proposal is None:
            return self._unseen(self.quasi_random(index), index, seen)
        return proposal

    def _unseen(self, proposal: dict[str, Any], index: int, seen: set[str]) -> dict[str, Any]:
        """The proposal, or a random one not tried yet when it repeats a configuration."""
        rng = random.Random(f"hpo-dedup:{self.seed}:{index}")
        for _ in range(DUPLICATE_RETRIES):
            if _key(proposal) not in seen:
                return proposal
            proposal = self.space.sample(rng)
        return proposal  # a small space that is (nearly) exhausted: a repeat is allowed

    def _derive(self, trial: Observed, levels: Sequence[float]) -> _Derived:
        """The trial's unit point, key and standing, from the cache while its params, reports and the
        levels are unchanged. Compared whole, not by the count and last report: a sampler kept
        between reconciles may see a trial deleted and made again, or its reports rewritten."""
        levels = tuple(levels)
        cached = None if trial.index is None else self._derived.get(trial.index)
        if (
            cached is not None
            and (cached.reports is trial.reports or cached.reports == trial.reports)
            and cached.levels == levels
            and cached.params == trial.params
        ):
            return cached
        records = rung_records(0, trial.reports, levels)
        derived = _Derived(
            trial.params,
            trial.reports,
            levels,
            _key(trial.params),
            _unit_of(self.space, trial.params),
            tuple(score(r.value, self.mode) for r in records),
        )
        if trial.index is not None:
            self._derived[trial.index] = derived
        return derived

    def _ranked(self, derived: Sequence[_Derived]) -> list[list[float]] | None:
        """Unit points of the tried trials, best first: ranked by the highest level (rung or R) each
        reached, then by its value there, as ASHA itself ranks them. None while too few reported."""
        ranked: list[tuple[int, float, int, list[float]]] = []
        for i, d in enumerate(derived):
            if d.unit is None or d.standing is None:
                continue
            ranked.append((d.standing[0], d.standing[1], -i, d.unit))
        if len(ranked) < min_observations(self.space):
            return None
        ranked.sort(key=lambda r: (r[0], r[1], r[2]), reverse=True)
        return [r[3] for r in ranked]

    def _local_step(
        self, rng: random.Random, ranked: Sequence[list[float]], seen: set[str]
    ) -> dict[str, Any] | None:
        """A Gaussian step around one of the best trials, per dimension half as wide as the good
        trials' spread there (so it shrinks as they gather); choices keep their category."""
        centre = ranked[rng.randrange(min(LOCAL_TOP, len(ranked)))]
        good = np.asarray(ranked[: max(2, math.ceil(GAMMA * len(ranked)))])
        steps = np.maximum(LOCAL_SCALE * good.std(axis=0), LOCAL_MIN_STEP)
        last = math.nextafter(1.0, 0.0)
        for _ in range(DUPLICATE_RETRIES):
            u = [
                x if self.sizes[d] else min(max(rng.gauss(x, float(steps[d])), 0.0), last)
                for d, x in enumerate(centre)
            ]
            params = self.space.from_unit(u)
            if _key(params) not in seen:
                return params
        return None

    def _model_based(
        self,
        rng: random.Random,
        ranked: Sequence[list[float]] | None,
        seen: set[str],
    ) -> dict[str, Any] | None:
        if ranked is None:
            return None
        n_good = max(1, math.ceil(GAMMA * len(ranked)))
        good = _Parzen(self.space, ranked[:n_good])
        bad = _Parzen(self.space, ranked[n_good:])
        proposals: list[dict[str, Any]] = []
        units: list[list[float]] = []
        for _ in range(CANDIDATES):
            u = good.sample(rng)
            params = self.space.from_unit(u)
            if _key(params) in seen:
                continue
            proposals.append(params)
            # Score the snapped configuration, not the raw draw, so quantised spaces compare fairly.
            units.append(_unit_of(self.space, params) or u)
        if not proposals:
            return None
        ratios = [g - b for g, b in zip(good.log_density(units), bad.log_density(units), strict=True)]
        return proposals[max(range(len(ratios)), key=lambda i: (ratios[i], -i))]

    def _gp_fit(self, points: np.ndarray, scores: np.ndarray) -> gp.Model:
        """``gp.fit`` of these points and scores, the last fit again when they are the same."""
        key = (points.tobytes(), scores.tobytes(), points.shape)
        if self._fit is not None and self._fit[:3] == key:
            return self._fit[3]
        model = gp.fit(points, scores, self.sizes)
        self._fit = (*key, model)
        return model

    def _gp_based(
        self, rng: random.Random, derived: Sequence[_Derived], levels: Sequence[float], seen: set[str]
    ) -> dict[str, Any] | None:
        """The unseen candidate of highest expected improvement at the first rung under a Gaussian
        process over every rung result (gp.py); None while too few trials reported."""
        lo, hi = math.log(levels[0]), math.log(levels[-1])
        xs: list[list[float]] = []
        values: list[float] = []
        at_level: list[int] = []
        tried: list[list[float]] = []
        pending: list[list[float]] = []
        latest_at: list[int] = []  # the index in xs of each tried trial's latest result
        for d in derived:
            if d.unit is None:
                continue
            if not d.scores:
                pending.append([*d.unit, FIRST_RUNG])
                continue
            tried.append([*d.unit, FIRST_RUNG])
            latest_at.append(len(xs) + len(d.scores) - 1)
            for k, s in enumerate(d.scores):
                xs.append([*d.unit, (math.log(levels[k]) - lo) / (hi - lo) if hi > lo else FIRST_RUNG])
                values.append(s)
                at_level.append(k)
        if len(tried) < min_observations(self.space):
            return None
        scores = gp.level_scores(values, at_level)
        model = self._gp_fit(np.asarray(xs, dtype=float), scores)
        # The incumbent and the centres of local candidates: the best predicted at the first rung among
        # the trials whose latest result ranks high (predicting every trial would cost more than the rest).
        shortlist = np.argsort(-scores[np.asarray(latest_at)], kind="stable")[:GP_SHORTLIST]
        tried = [tried[int(i)] for i in shortlist]
        mu_tried = model.predict_mean(np.asarray(tried))
        model = model.with_believed(np.asarray(pending))
        incumbent = float(mu_tried.max())
        dims = len(self.space)
        draw = np.random.default_rng(rng.getrandbits(64))
        parts = [draw.random((GP_UNIFORM_CANDIDATES, dims))]
        choice = np.asarray(self.sizes) > 0
        for t in np.argsort(-mu_tried, kind="stable")[:GP_TOP]:
            centre = np.asarray(tried[int(t)][:dims])
            for scale in GP_LOCAL_SCALES:
                step = centre + draw.normal(0.0, scale, (GP_LOCAL_CANDIDATES, dims))
                # A choice keeps its category, or (one time in five) takes any.
                other = draw.random((GP_LOCAL_CANDIDATES, dims))
                keep = draw.random((GP_LOCAL_CANDIDATES, dims)) >= 0.2
                step = np.where(choice, np.where(keep, centre, other), step)
                parts.append(np.clip(step, 0.0, math.nextafter(1.0, 0.0)))
        # Rank the raw candidates, then snap the best few to the space (its grids and choices) and
        # re-score them there: snapping every candidate would cost most of a proposal.
        raw = np.vstack(parts)
        mu, sd = model.predict(np.hstack([raw, np.full((len(raw), 1), FIRST_RUNG)]))
        order = np.argsort(-gp.expected_improvement(mu, sd, incumbent + GP_XI), kind="stable")
        proposals: list[dict[str, Any]] = []
        units: list[list[float]] = []
        keys: set[str] = set()
        for i in order:
            u = raw[int(i)].tolist()
            params = self.space.from_unit(u)
            key = _key(params)
            if key in seen or key in keys:
                continue
            keys.add(key)
            proposals.append(params)
            units.append([*(_unit_of(self.space, params) or u), FIRST_RUNG])
            if len(proposals) == GP_SNAPPED:
                break
        if not proposals:
            return None
        mu, sd = model.predict(np.asarray(units))
        gain = gp.expected_improvement(mu, sd, incumbent + GP_XI)
        return proposals[int(np.argmax(gain))]
