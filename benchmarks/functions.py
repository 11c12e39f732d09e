"""Synthetic multi-fidelity benchmark functions with a cost model, written from their published formulas.

Every problem is a minimisation of ``value(params, epoch)`` where the fidelity ``z = epoch / R`` grows
with the epochs trained (epochs 1..R; ``z = 1`` at R is the function itself), an epoch costs
``epoch_seconds(params)`` seconds of (virtual) time, and the known full-fidelity optimum gives the
simple regret of a configuration: ``true_value(params) - optimum``, always measured noise-free at
``z = 1``, whatever a contender observed on the way.

MF-Branin (Kandasamy et al., "Multi-fidelity Bayesian Optimisation with Continuous Approximations",
ICML 2017, appendix), with one fidelity ``z`` for all three of its fidelity coordinates::

    f(x, z) = a (x2 - b(z) x1^2 + c(z) x1 - r)^2 + s (1 - t(z)) cos(x1) + s
    a = 1, b(z) = 5.1 / (4 pi^2) - 0.01 (1 - z), c(z) = 5 / pi - 0.1 (1 - z), r = 6, s = 10,
    t(z) = 1 / (8 pi) + 0.05 (1 - z),   x1 in [-5, 10], x2 in [0, 15]

    minimum at z = 1: 0.397887 at (-pi, 12.275), (pi, 2.275), (9.42478, 2.475).

MF-Hartmann-6 (the Hartmann-6 function; its fidelity enters through the weights ``alpha`` as in
Kandasamy et al., "Gaussian Process Bandit Optimisation with Multi-fidelity Evaluations", NeurIPS
2016, with a bias direction ``delta`` and a fidelity-dependent noise of our choosing)::

    f(x, z) = -sum_i alpha_i(z) exp(-sum_j A_ij (x_j - P_ij)^2) + sigma (1 - z) eps(x, z)
    alpha(z) = alpha - bias (1 - z) delta,   alpha = (1.0, 1.2, 3.0, 3.2),   x in [0, 1]^6
    eps ~ N(0, 1), fixed per (configuration, epoch, seed) so every contender sees the same draw

    minimum at z = 1: -3.32237 at (0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573).

Presets:

* ``good``: ``delta = (1, 1, 1, 1)``, ``bias = 0.1`` (every basin equally shallower at low fidelity, so
  low fidelity ranks configurations nearly as the full one does), ``sigma = 0.05``.
* ``bad``: ``delta = (0, 0, 1, -1)``, ``bias = 1.0``, ``sigma = 0.2``: at low fidelity the basin that
  holds the global minimum (term 3) is shallower and the basin of term 4 deeper, so until the last
  epochs low fidelity prefers the local minimum near P_4 (-3.2032 at full fidelity) to the global
  one: early stopping is misled.

Cost model: one epoch costs ``base_seconds * (0.5 + u)`` where ``u`` in [0, 1] is the position of one
parameter in its range (``x1`` for Branin, ``x6`` for Hartmann-6), as a batch size or a model width
would make some configurations slower per epoch than others; the mean is ``base_seconds``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# --- Branin ---------------------------------------------------------------------------------

BRANIN_MIN = 0.397887
BRANIN_MINIMISERS = ((-math.pi, 12.275), (math.pi, 2.275), (9.42478, 2.475))


def mf_branin(x1: float, x2: float, z: float) -> float:
    """Kandasamy et al.'s multi-fidelity Branin at fidelity ``z`` in [0, 1] (z = 1: Branin)."""
    a, r, s = 1.0, 6.0, 10.0
    b = 5.1 / (4 * math.pi**2) - 0.01 * (1 - z)
    c = 5 / math.pi - 0.1 * (1 - z)
    t = 1 / (8 * math.pi) + 0.05 * (1 - z)
    return a * (x2 - b * x1**2 + c * x1 - r) ** 2 + s * (1 - t) * math.cos(x1) + s


# --- Hartmann-6 ------------------------------------------------------------------------------

HARTMANN6_MIN = -3.32237
HARTMANN6_MINIMISER = (0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573)
HARTMANN6_ALPHA = (1.0, 1.2, 3.0, 3.2)
HARTMANN6_A = (
    (10.0, 3.0, 17.0, 3.5, 1.7, 8.0),
    (0.05, 10.0, 17.0, 0.1, 8.0, 14.0),
    (3.0, 3.5, 1.7, 10.0, 17.0, 8.0),
    (17.0, 8.0, 0.05, 10.0, 0.1, 14.0),
)
HARTMANN6_P = (
    (0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886),
    (0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991),
    (0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650),
    (0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381),
)


@dataclass(frozen=True)
class FidelityBias:
    """How low fidelity distorts Hartmann-6: ``alpha(z) = alpha - bias (1 - z) delta`` plus noise."""

    delta: tuple[float, float, float, float]
    bias: float
    sigma: float


HARTMANN6_PRESETS = {
    "good": FidelityBias(delta=(1.0, 1.0, 1.0, 1.0), bias=0.1, sigma=0.05),
    "bad": FidelityBias(delta=(0.0, 0.0, 1.0, -1.0), bias=1.0, sigma=0.2),
}


def mf_hartmann6(x: Sequence[float], z: float, preset: FidelityBias) -> float:
    """Hartmann-6 with fidelity-biased weights, noise-free (the noise is added by the Problem)."""
    total = 0.0
    for i in range(4):
        alpha = HARTMANN6_ALPHA[i] - preset.bias * (1 - z) * preset.delta[i]
        inner = sum(HARTMANN6_A[i][j] * (x[j] - HARTMANN6_P[i][j]) ** 2 for j in range(6))
        total -= alpha * math.exp(-inner)
    return total


# --- problems --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """A benchmark: a search space in hpo_config.yaml form, a multi-fidelity value and a cost."""

    name: str
    hp_space: dict[str, dict[str, Any]]
    max_resource: int  # R: epochs of one full training
    optimum: float
    target_regret: float  # "time to reach" is measured to this regret
    base_seconds: float  # mean seconds per epoch
    cost_param: str  # the parameter that makes an epoch slower or faster
    noise_sigma: float
    fn: Callable[[dict[str, Any], float], float] = field(repr=False)

    def fidelity(self, epoch: int) -> float:
        return min(max(epoch / self.max_resource, 0.0), 1.0)

    def true_value(self, params: dict[str, Any]) -> float:
        """The noise-free value at full fidelity."""
        return self.fn(params, 1.0)

    def regret(self, params: dict[str, Any]) -> float:
        return self.true_value(params) - self.optimum

    def value(self, params: dict[str, Any], epoch: int, seed: int = 0) -> float:
        """What a trial reports after ``epoch`` epochs (noise fixed per configuration, epoch, seed)."""
        z = self.fidelity(epoch)
        v = self.fn(params, z)
        if self.noise_sigma > 0 and z < 1:
            key = f"{self.name}:{seed}:{epoch}:{sorted(params.items())!r}"
            v += self.noise_sigma * (1 - z) * random.Random(key).gauss(0.0, 1.0)
        return v

    def epoch_seconds(self, params: dict[str, Any]) -> float:
        spec = self.hp_space[self.cost_param]
        low, high = spec["range"][0], spec["range"][1]
        u = (float(params[self.cost_param]) - low) / (high - low)
        return self.base_seconds * (0.5 + min(max(u, 0.0), 1.0))

    def default_params(self) -> dict[str, Any]:
        """The middle of every range: what the first trial of this project's core tries."""
        return {name: (spec["range"][0] + spec["range"][1]) / 2 for name, spec in self.hp_space.items()}

    def train_seconds(self) -> float:
        """One full training (R epochs) with the default configuration."""
        return self.max_resource * self.epoch_seconds(self.default_params())


def _branin(params: dict[str, Any], z: float) -> float:
    return mf_branin(float(params["x1"]), float(params["x2"]), z)


def _hartmann(preset: FidelityBias) -> Callable[[dict[str, Any], float], float]:
    def fn(params: dict[str, Any], z: float) -> float:
        return mf_hartmann6([float(params[f"x{j}"]) for j in range(1, 7)], z, preset)

    return fn


def _unit(name: str) -> dict[str, Any]:
    return {"param_type": "uniform", "range": [0.0, 1.0]}


MAX_RESOURCE = 27  # rungs 1, 3, 9 with eta = 3
BASE_SECONDS = 10.0

PROBLEMS: dict[str, Problem] = {
    "branin": Problem(
        name="branin",
        hp_space={
            "x1": {"param_type": "uniform", "range": [-5.0, 10.0]},
            "x2": {"param_type": "uniform", "range": [0.0, 15.0]},
        },
        max_resource=MAX_RESOURCE,
        optimum=BRANIN_MIN,
        target_regret=1.0,
        base_seconds=BASE_SECONDS,
        cost_param="x1",
        noise_sigma=0.0,
        fn=_branin,
    ),
    **{
        f"hartmann6-{preset}": Problem(
            name=f"hartmann6-{preset}",
            hp_space={f"x{j}": _unit(f"x{j}") for j in range(1, 7)},
            max_resource=MAX_RESOURCE,
            optimum=HARTMANN6_MIN,
            target_regret=0.5,
            base_seconds=BASE_SECONDS,
            cost_param="x6",
            noise_sigma=HARTMANN6_PRESETS[preset].sigma,
            fn=_hartmann(HARTMANN6_PRESETS[preset]),
        )
        for preset in ("good", "bad")
    },
}
