"""Tests for llmfoundations.moe: routing, losses, capacity and the batched MoE layer.

Independent references: a token-by-token loop (``moe_reference``), exact formulas
on hand-made routings, and Hugging Face ``transformers``' Mixtral sparse MoE block and
load-balancing loss.
"""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from llmfoundations import moe
from llmfoundations.moe import (
    Expert,
    MoELayer,
    dispatch_order,
    expert_capacity,
    load_balancing_loss,
    moe_reference,
    router_z_loss,
    top_k_routing,
)

ATOL, RTOL = 1e-6, 1e-5  # fp32: the batched and per-token paths differ only by rounding


def make_layer(seed: int = 0, **kwargs) -> MoELayer:
    """A layer in eval mode, or in training mode when it has a capacity (which applies only
    in training); no router jitter, so both modes are deterministic."""
    torch.manual_seed(seed)
    args = dict(d_model=16, d_ff=32, n_experts=4, top_k=2)
    args.update(kwargs)
    layer = MoELayer(**args)
    return layer.train(args.get("capacity_factor") is not None)


def routed_layer(n_experts: int, top_k: int, **kwargs) -> MoELayer:
    """A layer whose router is the identity: token x picks the experts where x is largest."""
    layer = make_layer(d_model=n_experts, d_ff=8, n_experts=n_experts, top_k=top_k, **kwargs)
    with torch.no_grad():
        layer.gate.weight.copy_(torch.eye(n_experts))
    return layer


def token_for(choices: list[int], n_experts: int) -> torch.Tensor:
    """A token whose logits rank ``choices`` first, second, ... (identity router)."""
    x = torch.zeros(n_experts)
    for rank, e in enumerate(choices):
        x[e] = 3.0 - rank
    return x


def test_doctests():
    result = doctest.testmod(moe, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------- routing


def test_top_k_routing_renormalises_the_kept_probabilities():
    torch.manual_seed(0)
    logits = torch.randn(10, 6)
    r = top_k_routing(logits, top_k=3)
    assert r.experts.shape == (10, 3) and r.experts.dtype == torch.long
    assert_close(r.weights.sum(-1), torch.ones(10), atol=1e-6, rtol=0)
    # renormalised top-k probabilities == softmax over the k kept logits alone
    kept_logits = logits.gather(-1, r.experts)
    assert_close(r.weights, kept_logits.softmax(-1), atol=1e-6, rtol=1e-6)
    # best first, and the chosen experts are the k largest logits
    assert torch.all(r.weights[:, :-1] >= r.weights[:, 1:])
    assert_close(kept_logits, logits.topk(3).values, atol=0, rtol=0)


def test_routing_runs_softmax_in_float32():
    r = top_k_routing(torch.randn(4, 8, dtype=torch.bfloat16), top_k=2)
    assert r.probs.dtype == torch.float32 and r.weights.dtype == torch.float32


# --------------------------------------------------------------------------- layer vs references


@pytest.mark.parametrize("activation", ["swiglu", "gelu", "relu"])
@pytest.mark.parametrize(("n_experts", "top_k"), [(4, 1), (8, 2), (4, 4)])
def test_layer_matches_per_token_reference(activation, n_experts, top_k):
    layer = make_layer(n_experts=n_experts, top_k=top_k, activation=activation, bias=True)
    x = torch.randn(3, 7, 16)
    y = layer(x).output
    assert y.shape == x.shape
    assert_close(y, moe_reference(layer, x), atol=ATOL, rtol=RTOL)


def test_layer_accepts_flat_tokens():
    layer = make_layer()
    x = torch.randn(2, 5, 16)
    out = layer(x)
    assert_close(layer(x.reshape(10, 16)).output, out.output.reshape(10, 16), atol=0, rtol=0)
    assert out.router_logits.shape == (10, 4)
    assert out.routing.experts.shape == (10, 2) and out.routing.experts.dtype == torch.long


def test_all_experts_with_a_zero_router_is_the_dense_average():
    layer = make_layer(n_experts=4, top_k=4)
    with torch.no_grad():
        layer.gate.weight.zero_()  # equal logits -> every weight is 1/4
    x = torch.randn(2, 6, 16)
    dense = torch.stack([expert(x) for expert in layer.experts]).mean(dim=0)
    assert_close(layer(x).output, dense, atol=ATOL, rtol=RTOL)


def mixtral_block(n_experts: int, top_k: int, d_model: int = 16, d_ff: int = 24):
    transformers = pytest.importorskip("transformers")
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    config = transformers.MixtralConfig(
        hidden_size=d_model,
        intermediate_size=d_ff,
        num_local_experts=n_experts,
        num_experts_per_tok=top_k,
        hidden_act="silu",
        router_jitter_noise=0.0,
        experts_implementation="eager",
    )
    return MixtralSparseMoeBlock(config).eval()


def copy_to_mixtral(layer: MoELayer, block) -> None:
    """Copy our weights into transformers' Mixtral block.

    transformers 5 stores all experts as 3-D parameters: ``gate_up_proj`` (E, 2F, C)
    holds every expert's w1 (gate) stacked over w3 (up), ``down_proj`` (E, C, F) w2.
    Older versions kept one ``w1``/``w2``/``w3`` Linear per expert.
    """
    with torch.no_grad():
        block.gate.weight.copy_(layer.gate.weight)
        experts = block.experts
        if hasattr(experts, "gate_up_proj"):
            for e, ours in enumerate(layer.experts):
                experts.gate_up_proj[e].copy_(
                    torch.cat([ours.gate_proj.weight, ours.up_proj.weight], dim=0)
                )
                experts.down_proj[e].copy_(ours.down_proj.weight)
        else:  # transformers 4.x: a ModuleList of MixtralBlockSparseTop2MLP
            for theirs, ours in zip(experts, layer.experts, strict=True):
                theirs.w1.weight.copy_(ours.gate_proj.weight)
                theirs.w3.weight.copy_(ours.up_proj.weight)
                theirs.w2.weight.copy_(ours.down_proj.weight)


@pytest.mark.parametrize(("n_experts", "top_k"), [(4, 2), (8, 2), (6, 3), (4, 1)])
def test_layer_matches_transformers_mixtral_block(n_experts, top_k):
    layer = make_layer(d_model=16, d_ff=24, n_experts=n_experts, top_k=top_k)
    block = mixtral_block(n_experts, top_k)
    copy_to_mixtral(layer, block)
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        theirs = block(x.clone())
        theirs = theirs[0] if isinstance(theirs, tuple) else theirs
        ours = layer(x).output
    assert_close(ours, theirs, atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------- gradients


def test_gradients_match_the_reference_and_reach_the_router():
    layer = make_layer(n_experts=4, top_k=2)
    x = torch.randn(2, 6, 16, requires_grad=True)
    target = torch.randn(2, 6, 16)

    def grads(forward):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        ((forward(x) - target) ** 2).sum().backward()
        params = layer.named_parameters()
        return {n: p.grad.clone() for n, p in params if p.grad is not None}, x.grad

    ours, ours_x = grads(lambda t: layer(t).output)
    ref, ref_x = grads(lambda t: moe_reference(layer, t))
    assert ours.keys() == ref.keys()
    for name in ours:
        assert_close(ours[name], ref[name], atol=1e-5, rtol=1e-4, msg=name)
    assert_close(ours_x, ref_x, atol=1e-5, rtol=1e-4)
    # the router learns through the mixing weights of the chosen experts
    assert ours["gate.weight"].abs().sum() > 0


def test_only_experts_that_received_tokens_get_gradients():
    layer = routed_layer(n_experts=4, top_k=1)
    x = torch.stack([token_for([e], 4) for e in (0, 2, 2, 0, 1)])  # expert 3 gets nothing
    out = layer(x)
    out.output.sum().backward()
    assert out.tokens_per_expert.tolist() == [2, 1, 2, 0]
    for e in range(3):
        assert layer.experts[e].down_proj.weight.grad.abs().sum() > 0
    assert layer.experts[3].down_proj.weight.grad is None


def test_aux_losses_are_attached_to_the_router():
    layer = make_layer()
    out = layer(torch.randn(3, 4, 16))
    assert out.router_logits.requires_grad
    (out.aux_loss + out.z_loss).backward()
    assert layer.gate.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in layer.experts.parameters())


# --------------------------------------------------------------------------- load-balancing loss


def test_load_balancing_loss_all_tokens_to_one_expert():
    n_experts, a = 4, 2.0
    logits = torch.zeros(5, n_experts)
    logits[:, 0] = a  # every token's first choice is expert 0
    p0 = math.exp(a) / (math.exp(a) + n_experts - 1)
    # top-1: f = (1, 0, 0, 0) -> E * 1 * P0
    assert load_balancing_loss(logits, top_k=1).item() == pytest.approx(n_experts * p0, rel=1e-6)
    # top-2 with second choice always expert 1: f = (1/2, 1/2, 0, 0)
    logits[:, 1] = 1.0
    p = torch.softmax(torch.tensor([a, 1.0, 0.0, 0.0]), -1)
    expected = n_experts * (0.5 * p[0] + 0.5 * p[1]).item()
    assert load_balancing_loss(logits, top_k=2).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("top_k", [1, 2, 3, 4])
def test_load_balancing_loss_is_one_when_perfectly_balanced(top_k):
    # each token's logits are a cyclic shift of the same vector: every expert is chosen
    # equally often at every rank, and the mean probability of every expert is 1/E
    base = torch.tensor([3.0, 2.0, 1.0, 0.0])
    logits = torch.stack([base.roll(i) for i in range(4)] * 3)  # (12, 4)
    assert load_balancing_loss(logits, top_k).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_load_balancing_loss_is_transformers_value_divided_by_k(top_k):
    pytest.importorskip("transformers")
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    torch.manual_seed(top_k)
    layers = (torch.randn(20, 6), torch.randn(20, 6) * 3)
    theirs = load_balancing_loss_func(layers[:1], num_experts=6, top_k=top_k)
    ours = load_balancing_loss(layers[0], top_k)
    assert_close(theirs, top_k * ours, atol=1e-6, rtol=1e-6)
    # over several layers, theirs pools the tokens of all layers
    theirs = load_balancing_loss_func(layers, num_experts=6, top_k=top_k)
    ours = load_balancing_loss(torch.cat(layers), top_k)
    assert_close(theirs, top_k * ours, atol=1e-6, rtol=1e-6)


def test_load_balancing_loss_gradient_moves_probability_off_the_crowded_expert():
    logits = torch.zeros(6, 3)
    logits[:, 0] = 1.0
    logits.requires_grad_(True)
    load_balancing_loss(logits, top_k=1).backward()
    assert torch.all(logits.grad[:, 0] > 0)  # descent lowers expert 0's logit
    assert torch.all(logits.grad[:, 1:] < 0)


# --------------------------------------------------------------------------- router z-loss


def test_router_z_loss_formula():
    torch.manual_seed(0)
    logits = torch.randn(7, 5) * 4
    expected = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.tolist()) / 7
    assert router_z_loss(logits).item() == pytest.approx(expected, rel=1e-6)
    assert router_z_loss(torch.zeros(3, 8)).item() == pytest.approx(math.log(8) ** 2, rel=1e-6)
    # shifting all logits of a token changes the z-loss but not the routing
    shifted = logits + 10
    assert router_z_loss(shifted) > router_z_loss(logits)
    assert torch.equal(top_k_routing(shifted, 2).experts, top_k_routing(logits, 2).experts)


# --------------------------------------------------------------------------- capacity


def test_expert_capacity_formula():
    assert expert_capacity(8, 4, 1, 1.0) == 2
    assert expert_capacity(10, 4, 2, 1.0) == 5
    assert expert_capacity(10, 4, 2, 1.25) == 7  # ceil(6.25)
    assert expert_capacity(3, 8, 1, 1.0) == 1  # never zero


def test_capacity_drops_are_counted_exactly_top1():
    layer = routed_layer(n_experts=4, top_k=1, capacity_factor=1.0)  # capacity = ceil(8/4) = 2
    firsts = [0, 1, 0, 0, 2, 1, 0, 0]  # expert 0: 5 tokens, expert 1: 2, expert 2: 1
    x = torch.stack([token_for([e], 4) for e in firsts])
    out = layer(x)
    y = out.output
    assert layer.capacity(8) == 2
    assert out.tokens_per_expert.tolist() == [5, 2, 1, 0]
    assert out.dropped == 3
    kept = [True, True, True, False, True, True, False, False]  # expert 0 keeps tokens 0, 2
    assert out.kept[:, 0].tolist() == kept
    for n, e in enumerate(firsts):
        # top-1: the renormalised weight is 1; a dropped token leaves as zeros
        expected = layer.experts[e](x[n]) if kept[n] else torch.zeros(4)
        assert_close(y[n], expected, atol=ATOL, rtol=RTOL)
    assert_close(y, moe_reference(layer, x), atol=ATOL, rtol=RTOL)


def test_capacity_serves_first_choices_before_second_choices():
    layer = routed_layer(n_experts=3, top_k=2, capacity_factor=1.0)  # capacity = ceil(8/3) = 3
    choices = [[0, 1], [1, 0], [0, 2], [0, 1]]
    x = torch.stack([token_for(c, 3) for c in choices])
    out = layer(x)
    y = out.output
    # expert 0 is asked for 4 slots: first choices of tokens 0, 2, 3 win over token 1's
    # second choice, although token 1 comes earlier
    assert out.tokens_per_expert.tolist() == [4, 3, 1]
    assert out.dropped == 1
    assert out.kept.tolist() == [[True, True], [True, False], [True, True], [True, True]]
    # token 1 keeps only expert 1, with its weight from before the drop (not renormalised)
    w = top_k_routing(layer.gate(x[1:2]), 2).weights[0]
    assert w[0] < 1
    assert_close(y[1], w[0] * layer.experts[1](x[1]), atol=ATOL, rtol=RTOL)
    assert_close(y, moe_reference(layer, x), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("capacity_factor", [0.25, 0.5, 1.0, 1.5])
def test_layer_with_capacity_matches_reference(capacity_factor):
    layer = make_layer(n_experts=4, top_k=2, capacity_factor=capacity_factor)
    x = torch.randn(2, 12, 16)
    out = layer(x)
    y = out.output
    capacity = layer.capacity(24)
    expected_drops = (out.tokens_per_expert - capacity).clamp(min=0).sum().item()
    assert out.dropped == expected_drops == (~out.kept).sum().item()
    if capacity_factor < 1:
        assert out.dropped > 0
    assert_close(y, moe_reference(layer, x), atol=ATOL, rtol=RTOL)


def test_large_capacity_changes_nothing():
    x = torch.randn(2, 8, 16)
    unlimited = make_layer()(x).output
    roomy = make_layer(capacity_factor=100.0)(x)
    assert_close(roomy.output, unlimited, atol=0, rtol=0)
    assert roomy.dropped == 0 and bool(roomy.kept.all())


def test_dispatch_order_groups_slots_by_expert():
    experts = torch.tensor([[1, 0], [1, 2], [1, 0]])  # 3 tokens, rank-major slot s = k*3 + n
    order, routed, kept = dispatch_order(experts, 3)
    assert order.tolist() == [3, 5, 0, 1, 2, 4]
    assert routed.tolist() == kept.tolist() == [2, 3, 1]
    order, routed, kept = dispatch_order(experts, 3, capacity=1)
    assert order.tolist() == [3, 0, 4] and kept.tolist() == [1, 1, 1]


# --------------------------------------------------------------------------- properties


_PROPERTY_LAYER = make_layer(seed=1, n_experts=5, top_k=2)


@settings(max_examples=25, deadline=None)
@given(n_tokens=st.integers(1, 24), seed=st.integers(0, 2**16))
def test_permuting_tokens_permutes_outputs(n_tokens, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_tokens, 16, generator=g)
    perm = torch.randperm(n_tokens, generator=g)
    out = _PROPERTY_LAYER(x)
    permuted = _PROPERTY_LAYER(x[perm])
    assert_close(permuted.output, out.output[perm], atol=ATOL, rtol=RTOL)
    assert torch.equal(permuted.routing.experts, out.routing.experts[perm])


@settings(max_examples=40, deadline=None)
@given(
    n_tokens=st.integers(1, 30),
    n_experts=st.integers(1, 6),
    data=st.data(),
)
def test_capacity_bookkeeping(n_tokens, n_experts, data):
    top_k = data.draw(st.integers(1, n_experts))
    factor = data.draw(st.sampled_from([0.1, 0.5, 1.0, 2.0]))
    seed = data.draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    experts = torch.stack([torch.randperm(n_experts, generator=g)[:top_k] for _ in range(n_tokens)])
    capacity = expert_capacity(n_tokens, n_experts, top_k, factor)
    order, routed, kept = dispatch_order(experts, n_experts, capacity)
    assert routed.sum() == n_tokens * top_k
    assert torch.equal(kept, routed.clamp(max=capacity))
    assert order.numel() == kept.sum()
    flat = experts.T.reshape(-1)  # rank-major slot -> expert
    # grouped by expert, in increasing slot number (= priority) inside each group
    assert torch.equal(flat[order], torch.repeat_interleave(torch.arange(n_experts), kept))
    for e in range(n_experts):
        group = order[flat[order] == e]
        assert torch.equal(group, torch.sort(group).values)
        assert torch.equal(group, torch.nonzero(flat == e).flatten()[: kept[e]])


# --------------------------------------------------------------------------- jitter, dtype


def test_router_jitter_only_in_training_mode():
    torch.manual_seed(0)
    jittery = MoELayer(16, 32, 4, 2, router_jitter=0.5)
    x = torch.randn(3, 5, 16)
    assert_close(jittery.eval()(x).output, moe_reference(jittery, x), atol=ATOL, rtol=RTOL)
    clean_logits = jittery.gate(x.reshape(-1, 16))
    noisy = jittery.train()(x)
    assert not torch.allclose(noisy.router_logits, clean_logits)


def test_layer_runs_under_autocast():
    layer = make_layer()  # float32 weights
    x = torch.randn(2, 3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x).output
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    assert_close(y.float(), layer(x).output, atol=1e-2, rtol=1e-2)  # outputs ~0.3; bf16 keeps ~3 digits


def test_bfloat16_layer_keeps_dtype():
    layer = make_layer().to(torch.bfloat16)
    y = layer(torch.randn(2, 3, 16, dtype=torch.bfloat16)).output
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(top_k=5), ValueError, "top_k"),
        (dict(top_k=0), ValueError, "top_k"),
        (dict(n_experts=0, top_k=1), ValueError, "n_experts"),
        (dict(n_experts=2.0), TypeError, "n_experts"),
        (dict(d_model=0), ValueError, "d_model"),
        (dict(d_ff=True), TypeError, "d_ff"),
        (dict(capacity_factor=0.0), ValueError, "capacity_factor"),
        (dict(capacity_factor=-1.0), ValueError, "capacity_factor"),
        (dict(capacity_factor="1"), TypeError, "capacity_factor"),
        (dict(activation="tanh"), ValueError, "activation"),
        (dict(router_jitter=1.5), ValueError, "router_jitter"),
        (dict(router_jitter=-0.1), ValueError, "router_jitter"),
    ],
)
def test_bad_layer_arguments(kwargs, error, match):
    args = dict(d_model=16, d_ff=32, n_experts=4, top_k=2)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        MoELayer(**args)


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (torch.randn(16), ValueError, "x must have 2 or 3 dimensions"),
        (torch.randn(1, 2, 3, 16), ValueError, "x must have 2 or 3 dimensions"),
        (torch.randn(2, 8), ValueError, "d_model=16"),
        (torch.zeros(2, 16, dtype=torch.long), TypeError, "x must be a floating"),
        (torch.randn(2, 16, dtype=torch.float64), TypeError, "x has dtype"),
        (torch.randn(0, 16), ValueError, "x must not be empty"),
        ([[0.0] * 16], TypeError, "x must be a torch.Tensor"),
    ],
)
def test_bad_layer_inputs(x, error, match):
    layer = make_layer()
    with pytest.raises(error, match=match):
        layer(x)
    with pytest.raises(error, match=match):
        moe_reference(layer, x)


def test_bad_function_arguments():
    with pytest.raises(ValueError, match="router_logits"):
        load_balancing_loss(torch.randn(4), top_k=1)
    with pytest.raises(ValueError, match="top_k"):
        load_balancing_loss(torch.randn(4, 3), top_k=4)
    with pytest.raises(TypeError, match="router_logits"):
        router_z_loss(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="router_logits"):
        top_k_routing(torch.randn(0, 3), top_k=1)
    with pytest.raises(ValueError, match="experts must lie"):
        dispatch_order(torch.tensor([[0], [3]]), n_experts=3)
    with pytest.raises(TypeError, match="experts"):
        dispatch_order(torch.tensor([[0.0]]), n_experts=3)
    with pytest.raises(ValueError, match="capacity"):
        dispatch_order(torch.tensor([[0]]), n_experts=3, capacity=0)
    with pytest.raises(ValueError, match="capacity_factor"):
        expert_capacity(4, 2, 1, 0.0)
    with pytest.raises(ValueError, match="activation"):
        Expert(4, 8, activation="silu")


# --------------------------------------------------------------------------- capacity at inference


def test_capacity_drops_only_in_training():
    layer = make_layer(n_experts=4, top_k=2, capacity_factor=0.25)
    x = torch.randn(2, 12, 16)
    assert layer(x).dropped > 0 and layer.capacity(24) is not None
    layer.eval()
    out = layer(x)
    assert layer.capacity(24) is None and out.dropped == 0 and bool(out.kept.all())
    unlimited = make_layer(n_experts=4, top_k=2)  # same seed, same weights, no capacity
    assert_close(out.output, unlimited(x).output, atol=0, rtol=0)


def _mixtral_with_capacity():
    from llmfoundations.models import DecoderLM, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig.mixtral(vocab_size=40, n_experts=4, top_k=2, capacity_factor=1.0,
                                 init_std=0.2)
    return DecoderLM(config).eval()


def _past_logits_change(model) -> float:
    """Largest change of the logits at positions 0-5 when only tokens 6-11 change."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 40, (1, 12), generator=g)
    other = ids.clone()
    other[:, 6:] = torch.randint(0, 40, (1, 6), generator=g)
    with torch.no_grad():
        return (model(ids).logits[:, :6] - model(other).logits[:, :6]).abs().max().item()


def test_capacity_does_not_leak_the_future_at_inference():
    # The review's reproduction: with capacity applied in eval, changing tokens 6-11 moved
    # the logits at positions 0-5 by up to 1.87.
    assert _past_logits_change(_mixtral_with_capacity()) < 1e-5


def test_capacity_model_generates_the_same_with_and_without_the_cache():
    from llmfoundations.generate import generate

    model = _mixtral_with_capacity()
    prompt = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(1))
    cached = generate(model, prompt, max_new_tokens=8, use_cache=True)
    uncached = generate(model, prompt, max_new_tokens=8, use_cache=False)
    assert torch.equal(cached, uncached)


def test_capacity_in_training_depends_on_other_tokens():
    # What the prose teaches: while training, token dropping couples the tokens of a batch.
    assert _past_logits_change(_mixtral_with_capacity().train()) > 1e-3
