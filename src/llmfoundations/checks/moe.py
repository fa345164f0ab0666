"""Checks for Lab 01-6 (mixture of experts): routing, the balancing loss, capacity.

Each check runs the student's function next to a reference on fixed, seeded inputs and
either prints one line of success or raises ``AssertionError`` naming the failing case.
The cases are chosen so that the usual mistakes fail:

- ``top_k_routing``: the kept probabilities not renormalised (caught with ``k = 1``,
  where every weight must be exactly 1), the softmax over the token axis, the k
  *smallest* experts, experts not listed best first, an unstable softmax (logits near
  1000);
- ``load_balancing_loss``: Hugging Face's counting (slots divided by tokens, so ``k``
  times too large), counting only each token's first choice, the factor ``E`` missing,
  ``P`` taken from the renormalised top-k weights instead of the full softmax, and
  ``P`` detached from the graph (the value is right, the gradient is zero: this check
  also compares the gradient with respect to the router logits);
- ``kept_slots``: token-major priority (a token's second choice ahead of a later token's
  first choice), an off-by-one at the capacity, no capacity at all.

References, independent of the student's code: ``llmfoundations.moe.top_k_routing``,
``moe.load_balancing_loss`` and ``moe.dispatch_order`` (the same functions
``MoELayer`` runs; ``tests/test_checks_moe.py`` holds them against plain-Python loops).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from llmfoundations.moe import dispatch_order, load_balancing_loss, top_k_routing

from .core import check_callable, compare_with_reference, exercise_check

__all__ = ["check_top_k_routing", "check_load_balancing_loss", "check_kept_slots"]



# ------------------------------------------------------------------------ top_k_routing


def reference_top_k_routing(
    router_logits: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """``(weights, experts)``, both (N, K): Mixtral's rule, best expert first."""
    routing = top_k_routing(router_logits, k)
    return routing.weights, routing.experts


def _pair(name: str, student: Callable[..., Any]) -> Callable[..., tuple[Any, Any]]:
    """Wrap ``student`` so anything but a pair ``(weights, experts)`` fails clearly."""

    def run(*args: Any) -> tuple[Any, Any]:
        got = student(*args)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise AssertionError(
                f"{name} must return a pair (weights, experts), got {type(got).__name__}"
            )
        return got[0], got[1]

    return run


@exercise_check
def check_top_k_routing(
    student: Callable[[Tensor, int], tuple[Tensor, Tensor]],
) -> None:
    """Lab 01-6: ``top_k_routing(router_logits, k)`` -> ``(weights, experts)``.

    ``router_logits`` (N, E); ``experts`` (N, K): the k most probable experts, best
    first; ``weights`` (N, K): their softmax probabilities, renormalised to sum to one.
    """
    check_callable("top_k_routing", student)
    g = torch.Generator().manual_seed(16)
    cases = [
        (torch.tensor([[2.0, 1.0, 0.1, -1.0]]), 2),  # the worked example of the chapter
        (torch.randn(6, 4, generator=g) * 2, 2),
        (torch.randn(10, 8, generator=g) * 2, 2),  # Mixtral: 8 experts, top-2
        (torch.randn(5, 8, generator=g) * 2, 1),  # Switch: every weight must be 1
        (torch.randn(4, 4, generator=g), 4),  # k = E: all experts, sorted
        (torch.randn(7, 16, generator=g) * 3, 3),
        (torch.tensor([[1000.0, 999.0, 0.0, -5.0], [3.0, 998.0, 1001.0, 2.0]]), 2),
    ]
    both = _pair("top_k_routing", student)
    cases = [((logits, k), {}) for logits, k in cases]
    compare_with_reference(
        "top_k_routing (experts)",
        lambda logits, k: both(logits, k)[1],
        lambda logits, k: reference_top_k_routing(logits, k)[1],
        cases,
        atol=0,
        rtol=0,
    )
    compare_with_reference(
        "top_k_routing (weights)",
        lambda logits, k: both(logits, k)[0],
        lambda logits, k: reference_top_k_routing(logits, k)[0],
        cases,
        atol=1e-6,
        rtol=1e-5,
    )


# ------------------------------------------------------------------ load_balancing_loss


def _scalar(name: str, got: Any) -> Tensor:
    if not isinstance(got, Tensor) or got.numel() != 1:
        raise AssertionError(
            f"{name} must return a scalar tensor (the loss, with its gradient), got "
            f"{type(got).__name__}"
            + (f" of shape {tuple(got.shape)}" if isinstance(got, Tensor) else "")
        )
    return got.reshape(())


def _loss_value(student: Callable[..., Any]) -> Callable[..., Tensor]:
    def run(logits: Tensor, k: int) -> Tensor:
        return _scalar("load_balancing_loss", student(logits.clone(), k)).detach()

    return run


def _loss_gradient(
    student: Callable[..., Any], *, is_student: bool
) -> Callable[..., Tensor]:
    """The gradient of ``student(logits, k)`` with respect to the logits."""

    def run(logits: Tensor, k: int) -> Tensor:
        x = logits.clone().requires_grad_(True)
        loss = _scalar("load_balancing_loss", student(x, k))
        if not loss.requires_grad:
            if is_student:
                raise AssertionError(
                    "load_balancing_loss: the loss carries no gradient back to the router "
                    "logits; compute P from softmax(router_logits) without detaching it"
                )
            return torch.zeros_like(x)
        (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
        return torch.zeros_like(x) if grad is None else grad

    return run


@exercise_check
def check_load_balancing_loss(student: Callable[[Tensor, int], Tensor]) -> None:
    """Lab 01-6: ``load_balancing_loss(router_logits, k)``, the course's Switch loss
    ``E * sum_i f_i * P_i`` with ``f_i`` the fraction of the ``N * k`` token-slots
    routed to expert ``i`` and ``P_i`` the mean softmax probability of expert ``i``.

    The value and its gradient with respect to ``router_logits`` are both compared.
    """
    check_callable("load_balancing_loss", student)
    g = torch.Generator().manual_seed(61)
    skewed = torch.randn(12, 8, generator=g)
    skewed[:, 0] += 4.0  # most tokens prefer expert 0
    cases = [
        (torch.zeros(8, 4), 2),  # uniform: exactly 1 for any k
        (torch.randn(16, 4, generator=g) * 2, 1),
        (torch.randn(32, 8, generator=g) * 2, 2),  # Mixtral's shape of routing
        (skewed, 2),
        (torch.randn(20, 6, generator=g) * 3, 3),
        (torch.randn(1, 4, generator=g), 2),  # a single token
    ]
    cases = [((logits, k), {}) for logits, k in cases]
    compare_with_reference(
        "load_balancing_loss (value)",
        _loss_value(student),
        _loss_value(load_balancing_loss),
        cases,
        atol=1e-5,
        rtol=1e-5,
    )
    # The gradient depends on which experts win, so the uniform case (all ties) is left out.
    compare_with_reference(
        "load_balancing_loss (gradient)",
        _loss_gradient(student, is_student=True),
        _loss_gradient(load_balancing_loss, is_student=False),
        cases[1:],
        atol=1e-6,
        rtol=1e-4,
    )


# --------------------------------------------------------------------------- kept_slots


def reference_kept_slots(experts: Tensor, n_experts: int, capacity: int) -> Tensor:
    """(N, K) bool: True where the slot fits in its expert's capacity.

    Priority inside an expert: every first choice before any second choice, earlier
    tokens first within a rank (what ``MoELayer`` does).
    """
    n_tokens = experts.shape[0]
    order, _, _ = dispatch_order(experts, n_experts, capacity)  # kept slot numbers, k * N + n
    kept = torch.zeros(experts.numel(), dtype=torch.bool)
    kept[order] = True
    return rearrange(kept, "(k n) -> n k", n=n_tokens)


@exercise_check
def check_kept_slots(student: Callable[[Tensor, int, int], Tensor]) -> None:
    """Lab 01-6: ``kept_slots(experts, n_experts, capacity)`` -> (N, K) bool.

    ``experts`` (N, K) long holds every token's chosen experts, best first. Each expert
    accepts at most ``capacity`` token-slots: first all first choices (tokens in order),
    then all second choices, and so on; the rest are dropped (False).
    """
    check_callable("kept_slots", student)
    g = torch.Generator().manual_seed(6)
    cases = [
        (torch.tensor([[1, 0], [1, 2], [1, 0]]), 3, 2),
        (torch.tensor([[0, 1], [1, 0]]), 2, 1),  # token 1's first choice beats token 0's second
        (torch.tensor([[0], [0], [1], [0], [0], [0], [2], [3]]), 4, 2),  # Switch, k = 1
        (torch.randint(0, 4, (12, 1), generator=g), 4, 3),
        (torch.stack([torch.randperm(4, generator=g)[:2] for _ in range(12)]), 4, 3),
        (torch.stack([torch.randperm(8, generator=g)[:2] for _ in range(20)]), 8, 5),
        (torch.stack([torch.randperm(8, generator=g)[:2] for _ in range(20)]), 8, 1),
        (torch.stack([torch.randperm(6, generator=g)[:3] for _ in range(9)]), 6, 4),
        (torch.tensor([[2, 1], [0, 2]]), 3, 10),  # room for everything
    ]

    def run(experts: Tensor, n_experts: int, capacity: int) -> Tensor:
        before = experts.clone()
        got = student(experts, n_experts, capacity)
        if not torch.equal(experts, before):
            raise AssertionError("kept_slots changed its input tensor experts; leave it as it is")
        if isinstance(got, Tensor) and got.dtype != torch.bool:
            raise AssertionError(f"kept_slots must return a bool tensor, got dtype {got.dtype}")
        return got

    compare_with_reference(
        "kept_slots",
        run,
        reference_kept_slots,
        [(case, {}) for case in cases],
        atol=0,
        rtol=0,
    )
