"""Chinchilla scaling laws: fit a parametric loss law and split a compute budget.

Hoffmann et al. (2022, "Training Compute-Optimal Large Language Models",
https://arxiv.org/abs/2203.15556) model the final pre-training loss of a model
with ``N`` parameters trained on ``D`` tokens as

    L(N, D) = E + A / N**alpha + B / D**beta

``E`` is the loss of a perfect model on this data (the entropy of text), the second
term is what a finite model cannot capture, the third what finite data cannot
teach. Training costs about ``C = 6 * N * D`` FLOPs (2 for the forward pass and 4
for the backward pass, per parameter and token), so for a budget ``C`` the best
split has a closed form (:func:`compute_optimal`).

:func:`fit_scaling_law` is the paper's "Approach 3": minimise the Huber loss
(delta 1e-3) between the log of the predicted and the observed losses, with the
prediction written as a log-sum-exp of ``a - alpha log N``, ``b - beta log D`` and
``e`` (where ``a, b, e = log A, log B, log E``), by L-BFGS from a grid of starting
points. Everything runs in float64 on the CPU with ``torch.optim.LBFGS``. The exponents
are fitted as ``log alpha`` and ``log beta``, so they stay positive: a law whose loss
grows with ``N`` or ``D`` is not a scaling law, and the fit says so instead of
returning one.

>>> n_opt, d_opt = compute_optimal(5.76e23, CHINCHILLA_FIT)   # Gopher's budget
>>> round(n_opt / 1e9), round(d_opt / 1e12, 1)                  # params (B), tokens (T)
(32, 3.0)

What this module leaves out:

- The paper's Approaches 1 and 2 (the envelope of training curves and IsoFLOP
  profiles), which give about 20 tokens per parameter. With the *published*,
  rounded Approach 3 fit (:data:`CHINCHILLA_FIT`) the optimum at Gopher's budget is
  ~32B parameters on ~3.0T tokens, about 93 tokens per parameter, a known
  inconsistency; Besiroglu et al. (2024, https://arxiv.org/abs/2404.10102) refit the
  paper's data and recover roughly 20.
- Exact FLOP counts (attention FLOPs, embeddings), learning-rate schedules matched to
  ``D``, data repetition and the cost of inference, all of which move the optimum.
- The paper runs L-BFGS from every one of its 4,500 grid points. Here the whole grid
  is scored at once and L-BFGS refines ``n_starts`` of them: the best half by initial
  objective and a seeded random draw from the rest.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from itertools import product

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from llmfoundations._validate import check_positive, check_tensor

__all__ = [
    "CHINCHILLA_FIT",
    "PARAM_NAMES",
    "INIT_GRID",
    "TERM_FLOOR",
    "chinchilla_loss",
    "predict_loss",
    "training_flops",
    "fit_scaling_law",
    "compute_optimal",
    "tokens_per_parameter",
]

ArrayLike = float | Sequence[float] | np.ndarray | Tensor
Result = float | np.ndarray | Tensor  # same kind as the input (see _like)

CHINCHILLA_FIT: dict[str, float] = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
"""The fit published by Hoffmann et al. (2022), Approach 3 (rounded as printed)."""

PARAM_NAMES = ("E", "A", "B", "alpha", "beta")

INIT_GRID: dict[str, tuple[float, ...]] = {
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),  # log A
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),  # log B
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),  # log E
    "alpha": (0.05, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.05, 0.5, 1.0, 1.5, 2.0),
}
"""The paper's grid of initial values (6 * 6 * 5 * 5 * 5 = 4,500 points), except that
the exponents start at 0.05 where the paper has 0: they are fitted in log space."""

#: A fitted term ``A / N**alpha`` (or ``B / D**beta``) whose range over the runs is below this
#: fraction of the losses' range has no effect: the data show no power law in that variable.
TERM_FLOOR = 1e-3


def chinchilla_loss(
    N: ArrayLike, D: ArrayLike, E: float, A: float, B: float, alpha: float, beta: float
) -> Result:
    """``E + A / N**alpha + B / D**beta``, broadcast over ``N`` and ``D``.

    Returns a float for scalar inputs, a tensor if either input is a tensor, and a
    NumPy array otherwise.

    >>> round(chinchilla_loss(70e9, 1.4e12, **CHINCHILLA_FIT), 3)
    1.937
    """
    check_positive("E", E, allow_zero=True)
    for name, value in (("A", A), ("B", B), ("alpha", alpha), ("beta", beta)):
        check_positive(name, value)
    n, d = _positive_tensor("N", N), _positive_tensor("D", D)
    try:
        n, d = torch.broadcast_tensors(n, d)
    except RuntimeError:
        raise ValueError(
            f"N and D must broadcast together, got shapes {tuple(n.shape)} and {tuple(d.shape)}"
        ) from None
    loss = E + A / n**alpha + B / d**beta
    return _like(loss, N, D)


def predict_loss(N: ArrayLike, D: ArrayLike, params: Mapping[str, float]) -> Result:
    """:func:`chinchilla_loss` with the five constants taken from a mapping (e.g. a fit)."""
    return chinchilla_loss(N, D, *_law_params(params))


def training_flops(N: ArrayLike, D: ArrayLike) -> Result:
    """The usual estimate of training compute, ``6 * N * D`` FLOPs.

    >>> f"{training_flops(70e9, 1.4e12):.2e}"   # Chinchilla
    '5.88e+23'
    """
    n, d = _positive_tensor("N", N), _positive_tensor("D", D)
    return _like(6.0 * n * d, N, D)


def fit_scaling_law(
    N: ArrayLike,
    D: ArrayLike,
    L: ArrayLike,
    *,
    n_starts: int = 8,
    huber_delta: float = 1e-3,
    seed: int = 0,
    max_iter: int = 500,
) -> dict[str, float]:
    """Fit ``L = E + A/N**alpha + B/D**beta`` to training runs (Chinchilla Approach 3).

    ``N``, ``D`` and ``L`` are 1-D, equal-length and positive: parameters, training
    tokens and final loss of each run: at least 5 runs, with at least two distinct
    values of ``N`` and of ``D`` (with one value the term cannot be told apart from
    ``E``; in practice use several of each).

    Returns ``{"E", "A", "B", "alpha", "beta", "objective"}`` where ``objective`` is
    the summed Huber loss of the log-losses at the optimum (lower is better).

    Raises ``ValueError`` when the fitted ``A / N**alpha`` (or ``B / D**beta``) hardly
    changes over the runs (its range is below :data:`TERM_FLOOR` times the losses'
    range): the losses do not fall with ``N`` (or ``D``) as a power law, and the
    optimiser has sent the exponent or the coefficient to its bound. Warns (``RuntimeWarning``) when ``E`` comes out below 1e-6 times the smallest
    loss, i.e. at its bound 0: the runs do not reach the flat part of the curve, and
    ``E``, ``A`` and ``alpha`` trade off against each other.
    """
    n = _positive_tensor("N", N, ndim=1)
    d = _positive_tensor("D", D, ndim=1)
    loss = _positive_tensor("L", L, ndim=1)
    if not (n.shape == d.shape == loss.shape):
        raise ValueError(
            f"N, D and L must have the same length, got {n.numel()}, {d.numel()} and "
            f"{loss.numel()}"
        )
    if n.numel() < 5:
        raise ValueError(f"fitting 5 constants needs at least 5 runs, got {n.numel()}")
    if isinstance(n_starts, bool) or not isinstance(n_starts, int) or n_starts < 1:
        raise ValueError(f"n_starts must be an int >= 1, got {n_starts!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    check_positive("huber_delta", huber_delta)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    for name, values, term in (("N", n, "A / N**alpha"), ("D", d, "B / D**beta")):
        if values.unique().numel() < 2:
            raise ValueError(
                f"{name} has one distinct value ({values[0].item():.3g}) in all runs: the term "
                f"{term} is then a constant that cannot be told apart from E; vary {name}"
            )

    log_n, log_d, log_l = n.log(), d.log(), loss.log()  # (R,) each, R = number of runs

    def objective(theta: Tensor) -> Tensor:
        """Summed Huber loss for each parameter vector; theta (S, 5) -> (S,).

        theta holds (log A, log B, log E, log alpha, log beta).
        """
        a, b, e, log_alpha, log_beta = theta.unbind(-1)  # (S,) each
        alpha, beta = log_alpha.exp(), log_beta.exp()
        terms = torch.stack(
            [
                a[:, None] - alpha[:, None] * log_n,  # log(A / N^alpha)   (S, R)
                b[:, None] - beta[:, None] * log_d,  # log(B / D^beta)    (S, R)
                e[:, None].expand(-1, log_n.numel()),  # log E              (S, R)
            ]
        )  # (3, S, R)
        log_pred = torch.logsumexp(terms, dim=0)  # log L-hat   (S, R)
        target = log_l.expand_as(log_pred)
        return F.huber_loss(log_pred, target, reduction="none", delta=huber_delta).sum(-1)

    grid = torch.tensor(list(product(*INIT_GRID.values())), dtype=torch.float64)  # (4500, 5)
    grid[:, 3:] = grid[:, 3:].log()  # the exponents are searched in log space
    starts = _pick_starts(grid, objective(grid), n_starts, seed)  # (n_starts, 5)

    best_theta, best_value = None, math.inf
    for start in starts:
        theta = start.clone().requires_grad_(True)
        optimiser = torch.optim.LBFGS(
            [theta],
            lr=1.0,
            max_iter=max_iter,
            history_size=20,
            tolerance_grad=1e-7,
            tolerance_change=1e-9,
            line_search_fn="strong_wolfe",
        )

        def closure(theta=theta, optimiser=optimiser) -> Tensor:
            optimiser.zero_grad()
            # Dividing by delta only rescales (same minimiser); it keeps gradients O(1)
            # so L-BFGS's tolerances mean the same thing for any delta.
            value = objective(theta[None])[0] / huber_delta
            value.backward()
            return value

        optimiser.step(closure)
        with torch.no_grad():
            value = objective(theta[None])[0].item()
        if math.isfinite(value) and value < best_value:
            best_theta, best_value = theta.detach(), value

    if best_theta is None:
        raise ValueError("every L-BFGS run diverged; check that L holds losses of the runs")
    a, b, e, log_alpha, log_beta = best_theta.tolist()
    alpha, beta = math.exp(log_alpha), math.exp(log_beta)
    A, B = math.exp(a), math.exp(b)
    loss_span = (loss.max() - loss.min()).item()
    for name, term, source in (("alpha", A / n**alpha, "N"), ("beta", B / d**beta, "D")):
        # A term that hardly changes over the runs means the fit found no power law there:
        # its exponent went to 0 (a constant, merged into E) or its coefficient to 0.
        if (term.max() - term.min()).item() <= TERM_FLOOR * loss_span:
            raise ValueError(
                f"the fitted law gives {source} no effect on the loss ({name} = "
                f"{alpha if name == 'alpha' else beta:.3g}): the losses do not fall as a power "
                f"law of {source}; do they rise or stay flat as {source} grows?"
            )
    if math.exp(e) < 1e-6 * loss.min().item():
        warnings.warn(
            f"the fitted E is {math.exp(e):.2g}, at its bound 0: the runs do not show where "
            "the loss levels off, so E, A and alpha are poorly determined",
            RuntimeWarning,
            stacklevel=2,
        )
    return {
        "E": math.exp(e),
        "A": A,
        "B": B,
        "alpha": alpha,
        "beta": beta,
        "objective": best_value,
    }


def compute_optimal(C: ArrayLike, params: Mapping[str, float]) -> tuple[Result, Result]:
    """The loss-minimising ``(N_opt, D_opt)`` under ``6 * N * D = C`` for a fitted law.

    Setting the derivative of ``A N**-alpha + B (C / 6N)**-beta`` to zero gives::

        G     = (alpha A / (beta B)) ** (1 / (alpha + beta))
        N_opt = G      * (C / 6) ** (beta  / (alpha + beta))
        D_opt = G**-1  * (C / 6) ** (alpha / (alpha + beta))

    so ``6 * N_opt * D_opt == C`` exactly. ``C`` may be a number or an array of
    budgets (the result has the same kind). ``E`` does not move the optimum.
    """
    _, A, B, alpha, beta = _law_params(params)
    budget = _positive_tensor("C", C) / 6.0
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    n_opt = G * budget ** (beta / (alpha + beta))
    d_opt = budget ** (alpha / (alpha + beta)) / G
    return _like(n_opt, C), _like(d_opt, C)


def tokens_per_parameter(params: Mapping[str, float], C: ArrayLike) -> Result:
    """``D_opt / N_opt`` at budget ``C``: Chinchilla's rule of thumb says about 20."""
    n_opt, d_opt = compute_optimal(C, params)
    return d_opt / n_opt


# ------------------------------------------------------------------------------ helpers


def _law_params(params: Mapping[str, float]) -> tuple[float, float, float, float, float]:
    """The five constants of a law from a mapping, checked (extra keys are ignored)."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping with keys {PARAM_NAMES}, got {params!r}")
    missing = [k for k in PARAM_NAMES if k not in params]
    if missing:
        raise ValueError(f"params is missing {missing}; it needs {PARAM_NAMES}")
    E, A, B, alpha, beta = (params[k] for k in PARAM_NAMES)
    check_positive("params['E']", E, allow_zero=True)
    for name in ("A", "B", "alpha", "beta"):
        check_positive(f"params[{name!r}]", params[name])
    return float(E), float(A), float(B), float(alpha), float(beta)


def _positive_tensor(name: str, x: object, *, ndim: int | None = None) -> Tensor:
    """``x`` as a float64 tensor, checked to be non-empty, finite and > 0."""
    if isinstance(x, bool) or isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be a number or an array of numbers, got {type(x).__name__}")
    try:
        t = torch.as_tensor(x, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"{name} must be a number or an array of numbers, got {type(x).__name__}"
        ) from None
    check_tensor(name, t, ndim=ndim, nonempty=True)
    if not torch.isfinite(t).all():
        bad = t.flatten()[~torch.isfinite(t.flatten())][0].item()
        raise ValueError(f"{name} must be finite, got {bad}")
    if (t <= 0).any():
        raise ValueError(f"{name} must be > 0, got min {t.min().item()}")
    return t


def _like(result: Tensor, *inputs: object) -> Result:
    """Return ``result`` as the kind of the inputs: float, tensor or NumPy array."""
    if any(isinstance(x, Tensor) for x in inputs):
        return result
    if all(isinstance(x, (int, float)) for x in inputs):
        return float(result)
    return result.numpy()


def _pick_starts(
    grid: Tensor, values: Tensor, n_starts: int, seed: int
) -> Tensor:
    """The ``ceil(n/2)`` best grid points plus a seeded random draw from the rest."""
    order = torch.argsort(values)  # finite values first, best first (NaN sorts last)
    n_best = min(math.ceil(n_starts / 2), len(order))
    rest = order[n_best:]
    generator = torch.Generator().manual_seed(seed)
    n_random = min(n_starts - n_best, len(rest))
    random_pick = rest[torch.randperm(len(rest), generator=generator)[:n_random]]
    return grid[torch.cat([order[:n_best], random_pick])]
