"""The Lab 01-6 checks grade: right answers pass, plausible wrong ones fail.

(Blank answers and non-functions are tested for every check in ``test_checks.py``.)

The references inside the checks are also held against independent ones written as
plain loops: a softmax over the kept logits for routing, per-expert counting for the
balancing loss, and a slot-by-slot walk for capacity.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations import checks
from llmfoundations.checks import moe as moe_checks

# ---------------------------------------------------------------------------- top_k_routing


def good_top_k_routing(router_logits, k):
    probs = torch.softmax(router_logits.float(), dim=-1)  # (N, E)
    top, experts = probs.topk(k, dim=-1)  # (N, K) each
    return top / top.sum(dim=-1, keepdim=True), experts


def good_top_k_routing_from_logits(router_logits, k):
    # Mixtral's paper writes it as softmax(TopK(logits)): the same numbers
    top_logits, experts = router_logits.topk(k, dim=-1)
    return torch.softmax(top_logits, dim=-1), experts


@pytest.mark.parametrize("good", [good_top_k_routing, good_top_k_routing_from_logits])
def test_top_k_routing_check_passes_right_answers(good, capsys):
    checks.check_top_k_routing(good)
    out = capsys.readouterr().out
    assert "✔ top_k_routing (experts)" in out and "✔ top_k_routing (weights)" in out


def _not_renormalised(logits, k):
    return torch.softmax(logits, dim=-1).topk(k, dim=-1)


def _softmax_over_tokens(logits, k):
    top, experts = torch.softmax(logits, dim=0).topk(k, dim=-1)
    return top / top.sum(-1, keepdim=True), experts


def _smallest(logits, k):
    top, experts = torch.softmax(logits, dim=-1).topk(k, dim=-1, largest=False)
    return top / top.sum(-1, keepdim=True), experts


def _sorted_by_index(logits, k):
    weights, experts = good_top_k_routing(logits, k)
    experts, order = experts.sort(dim=-1)
    return weights.gather(-1, order), experts


def _unstable(logits, k):
    e = logits.exp()
    top, experts = (e / e.sum(-1, keepdim=True)).topk(k, dim=-1)
    return top / top.sum(-1, keepdim=True), experts


@pytest.mark.parametrize(
    "wrong", [_not_renormalised, _softmax_over_tokens, _smallest, _sorted_by_index, _unstable]
)
def test_top_k_routing_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="top_k_routing"):
        checks.check_top_k_routing(wrong)


def test_top_k_routing_check_wants_a_pair():
    with pytest.raises(AssertionError, match="must return a pair"):
        checks.check_top_k_routing(lambda logits, k: good_top_k_routing(logits, k)[0])


def test_reference_routing_equals_a_per_token_loop():
    logits = torch.randn(9, 6, generator=torch.Generator().manual_seed(0)) * 2
    weights, experts = moe_checks.reference_top_k_routing(logits, 3)
    for n in range(9):
        ranked = sorted(range(6), key=lambda e: -float(logits[n, e]))[:3]
        kept = [math.exp(float(logits[n, e])) for e in ranked]
        assert experts[n].tolist() == ranked
        expected = torch.tensor([v / sum(kept) for v in kept])
        torch.testing.assert_close(weights[n], expected, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------- load_balancing_loss


def good_load_balancing_loss(router_logits, k):
    n, e = router_logits.shape
    probs = torch.softmax(router_logits, dim=-1)  # (N, E)
    experts = probs.topk(k, dim=-1).indices  # (N, K)
    f = F.one_hot(experts, e).sum(dim=(0, 1)).float() / (n * k)  # (E,)
    return e * torch.sum(f * probs.mean(dim=0))


def _hf_counting(logits, k):  # slots divided by tokens: k times too large
    return good_load_balancing_loss(logits, k) * k


def _first_choice_only(logits, k):
    return good_load_balancing_loss(logits, 1)


def _no_factor_e(logits, k):
    return good_load_balancing_loss(logits, k) / logits.shape[-1]


def _p_from_topk_weights(logits, k):
    n, e = logits.shape
    top, experts = torch.softmax(logits, -1).topk(k, dim=-1)
    weights = torch.zeros(n, e).scatter(-1, experts, top / top.sum(-1, keepdim=True))
    f = F.one_hot(experts, e).sum(dim=(0, 1)).float() / (n * k)
    return e * torch.sum(f * weights.mean(dim=0))


def _p_detached_inside(logits, k):  # right value, zero gradient
    return good_load_balancing_loss(logits.detach(), k) + 0 * logits.sum()


@pytest.mark.parametrize(
    "wrong",
    [_hf_counting, _first_choice_only, _no_factor_e, _p_from_topk_weights, _p_detached_inside],
)
def test_load_balancing_loss_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="load_balancing_loss"):
        checks.check_load_balancing_loss(wrong)


def test_load_balancing_loss_check_passes_a_right_answer(capsys):
    checks.check_load_balancing_loss(good_load_balancing_loss)
    out = capsys.readouterr().out
    assert "✔ load_balancing_loss (value)" in out and "✔ load_balancing_loss (gradient)" in out


def test_load_balancing_loss_check_says_when_there_is_no_gradient():
    def no_grad(logits, k):
        return good_load_balancing_loss(logits, k).detach()

    with pytest.raises(AssertionError, match="no gradient"):
        checks.check_load_balancing_loss(no_grad)


def test_load_balancing_loss_check_wants_a_scalar_tensor():
    with pytest.raises(AssertionError, match="scalar tensor"):
        checks.check_load_balancing_loss(lambda logits, k: float(good_load_balancing_loss(logits, k)))


def test_reference_loss_equals_a_counting_loop():
    logits = torch.randn(15, 5, generator=torch.Generator().manual_seed(1)) * 2
    for k in (1, 2, 3):
        probs = torch.softmax(logits, dim=-1).tolist()
        counts = [0] * 5
        for row in probs:
            for e in sorted(range(5), key=lambda i: -row[i])[:k]:
                counts[e] += 1
        expected = 5 * sum(
            counts[i] / (15 * k) * sum(row[i] for row in probs) / 15 for i in range(5)
        )
        got = float(moe_checks.load_balancing_loss(logits, k))
        assert got == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------- kept_slots


def loop_kept_slots(experts, n_experts, capacity):
    """Walk the slots in priority order (rank by rank, token by token), counting loads."""
    n_tokens, k = experts.shape
    load = [0] * n_experts
    kept = [[False] * k for _ in range(n_tokens)]
    for rank in range(k):
        for n in range(n_tokens):
            e = int(experts[n, rank])
            if load[e] < capacity:
                load[e] += 1
                kept[n][rank] = True
    return torch.tensor(kept, dtype=torch.bool)


def good_kept_slots(experts, n_experts, capacity):
    slot_expert = experts.T.reshape(-1)  # (K*N,) rank-major: all first choices first
    one_hot = F.one_hot(slot_expert, n_experts)  # (K*N, E)
    place = (one_hot.cumsum(dim=0) * one_hot).sum(dim=-1)  # 1-based place in its queue
    return (place <= capacity).reshape(experts.shape[1], -1).T


def test_kept_slots_check_passes_right_answers(capsys):
    checks.check_kept_slots(loop_kept_slots)
    checks.check_kept_slots(good_kept_slots)
    assert capsys.readouterr().out.count("✔ kept_slots") == 2


def _token_major(experts, n_experts, capacity):
    load = [0] * n_experts
    kept = torch.zeros(experts.shape, dtype=torch.bool)
    for n in range(experts.shape[0]):
        for rank in range(experts.shape[1]):
            e = int(experts[n, rank])
            if load[e] < capacity:
                load[e] += 1
                kept[n, rank] = True
    return kept


def _off_by_one(experts, n_experts, capacity):
    return loop_kept_slots(experts, n_experts, capacity + 1)


def _no_capacity(experts, n_experts, capacity):
    return torch.ones(experts.shape, dtype=torch.bool)


def _as_ints(experts, n_experts, capacity):
    return loop_kept_slots(experts, n_experts, capacity).long()


def _sorts_its_input(experts, n_experts, capacity):
    kept = loop_kept_slots(experts, n_experts, capacity)
    experts.copy_(experts.sort(dim=0).values)
    return kept


@pytest.mark.parametrize(
    "wrong", [_token_major, _off_by_one, _no_capacity, _as_ints, _sorts_its_input]
)
def test_kept_slots_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="kept_slots"):
        checks.check_kept_slots(wrong)


routings = st.integers(1, 6).flatmap(
    lambda e: st.tuples(
        st.just(e),
        st.integers(1, e),
        st.integers(1, 12),
        st.integers(1, 8),
        st.integers(0, 2**16),
    )
)


@settings(max_examples=40, deadline=None)
@given(routings)
def test_reference_kept_slots_equals_the_loop_and_respects_capacity(args):
    n_experts, k, n_tokens, capacity, seed = args
    g = torch.Generator().manual_seed(seed)
    experts = torch.stack([torch.randperm(n_experts, generator=g)[:k] for _ in range(n_tokens)])
    kept = moe_checks.reference_kept_slots(experts, n_experts, capacity)
    assert torch.equal(kept, loop_kept_slots(experts, n_experts, capacity))
    routed = torch.bincount(experts.reshape(-1), minlength=n_experts)
    taken = torch.bincount(experts[kept], minlength=n_experts)
    assert torch.equal(taken, routed.clamp(max=capacity))  # every expert fills up to capacity
