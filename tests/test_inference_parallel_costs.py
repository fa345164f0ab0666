"""Tests for inference.parallel_costs: exact cost formulas, the GPipe timeline, and the
Lab 06-8 workers (one spawn of 2 ranks per worker, compared with one process here)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from llmfoundations.attention import MultiHeadAttention
from llmfoundations.inference import parallel_costs as pc
from llmfoundations.inference.parallel import run_workers
from llmfoundations.layers import FeedForward
from llmfoundations.models import DecoderLM, ModelConfig

TOL = dict(rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ formulas


def test_ring_all_reduce_bytes():
    assert pc.ring_all_reduce_bytes(1000, 1) == 0
    assert pc.ring_all_reduce_bytes(1000, 2) == 1000
    assert pc.ring_all_reduce_bytes(1000, 4) == 1500
    assert pc.ring_all_reduce_bytes(1024, 8) == 1792


def test_zero_bytes_match_the_paper():
    # Rajbhandari et al. 2020, Figure 1: Psi = 7.5B, N_d = 64, K = 12
    psi, n = 7_500_000_000, 64
    got = [pc.zero_bytes_per_rank(psi, n, s) / 1e9 for s in range(4)]
    assert got[0] == pytest.approx(120.0)
    assert got[1] == pytest.approx(31.4, abs=0.05)
    assert got[2] == pytest.approx(16.6, abs=0.05)
    assert got[3] == pytest.approx(1.875)
    assert pc.zero_bytes_per_rank(10, 1, 3) == pc.zero_bytes_per_rank(10, 1, 0) == 160


@pytest.mark.parametrize(
    "fn, args, match",
    [
        (pc.ring_all_reduce_bytes, (-1, 2), "n_bytes"),
        (pc.ring_all_reduce_bytes, (10, 0), "world_size"),
        (pc.zero_bytes_per_rank, (10, 2, 4), "stage"),
        (pc.zero_bytes_per_rank, (10, 2, -1), "stage"),
        (pc.bubble_fraction, (0, 4), "n_stages"),
        (pc.bubble_fraction, (2, 0), "n_microbatches"),
        (pc.gpipe_schedule, (2, 2, 0), "t_forward"),
    ],
)
def test_bad_arguments_are_named(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


def test_bad_types_are_refused():
    with pytest.raises(TypeError, match="n_stages"):
        pc.bubble_fraction(2.0, 4)


def test_bytes_sent_takes_each_collective_as_a_ring():
    log = [("all_reduce", 1000), ("send", 8), ("recv", 8), ("all_gather_into_tensor", 250),
           ("reduce_scatter_tensor", 1000)]  # fmt: skip
    assert pc.bytes_sent(log, 4) == 1500 + 8 + 0 + 750 + 750
    assert pc.bytes_sent(log, 1) == 8  # one rank: only the explicit send
    with pytest.raises(ValueError, match="unknown operation 'all_to_all'"):
        pc.bytes_sent([("all_to_all", 4)], 2)


def test_bubble_fraction_values():
    assert pc.bubble_fraction(1, 5) == 0
    assert pc.bubble_fraction(4, 1) == pytest.approx(0.75)
    assert pc.bubble_fraction(4, 4) == pytest.approx(3 / 7)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.integers(1, 3), st.integers(1, 3))
def test_gpipe_schedule_is_valid_and_idle_the_bubble_fraction(p, m, tf, tb):
    slots = pc.gpipe_schedule(p, m, tf, tb)
    assert len(slots) == 2 * p * m
    by = {(s.stage, s.microbatch, s.phase): s for s in slots}
    assert len(by) == 2 * p * m
    for s in slots:  # dependencies: forward from the previous stage, backward from the next
        assert s.end - s.start == (tf if s.phase == "forward" else tb)
        if s.phase == "forward" and s.stage > 0:
            assert s.start >= by[(s.stage - 1, s.microbatch, "forward")].end
        if s.phase == "backward":
            assert s.start >= by[(s.stage, s.microbatch, "forward")].end
            if s.stage < p - 1:
                assert s.start >= by[(s.stage + 1, s.microbatch, "backward")].end
    for stage in range(p):  # one thing at a time per stage
        mine = sorted((s.start, s.end) for s in slots if s.stage == stage)
        assert all(a[1] <= b[0] for a, b in zip(mine, mine[1:], strict=False))
    total = max(s.end for s in slots)
    assert total == (m + p - 1) * (tf + tb)
    busy = p * m * (tf + tb)
    assert (p * total - busy) / (p * total) == pytest.approx(pc.bubble_fraction(p, m))


# ------------------------------------------------------------ count_communication


def _sends_and_reduces(rank: int, world_size: int) -> list[tuple[str, int]]:
    import torch.distributed as dist

    with pc.count_communication() as log:
        dist.all_reduce(torch.ones(3, dtype=torch.float64))
        if rank == 0:
            dist.send(torch.ones(5), dst=1)
        else:
            dist.recv(torch.empty(5), src=0)
        # by keyword, as FSDP2 in torch 2.11 calls them: the full input of a reduce-scatter,
        # the input shard of an all-gather
        dist.reduce_scatter_tensor(output=torch.empty(2), input=torch.ones(2 * world_size))
        dist.all_gather_into_tensor(output_tensor=torch.empty(3 * world_size), input_tensor=torch.ones(3))
        # FSDP2's calls in torch 2.13, logged under the names above
        dist.reduce_scatter_single(output=torch.empty(4), input=torch.ones(4 * world_size))
        dist.all_gather_single(torch.empty(5 * world_size), torch.ones(5))
    dist.all_reduce(torch.ones(7))  # outside: not counted
    assert dist.all_reduce.__name__ == "all_reduce"  # restored
    return log


# --------------------------------------------------------------- lab workers


def _lm():
    torch.manual_seed(0)
    return DecoderLM(ModelConfig.gpt(vocab_size=32, d_model=16, n_layers=2, n_heads=2)), torch.randint(0, 32, (4, 8))


def _grads(model):
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _layers(world_size: int):
    torch.manual_seed(1)
    mlp, attn, x = FeedForward(16, 32), MultiHeadAttention(16, 4, rope_theta=10000.0), torch.randn(2, 5, 16)
    stages, px, py = [FeedForward(8, 12) for _ in range(world_size)], torch.randn(4, 8), torch.randn(4, 8)
    return mlp, attn, x, stages, px, py


def _refusal(fn, *args) -> str:
    """The ValueError ``fn(*args)`` raises (every rank raises it before any collective)."""
    try:
        fn(*args)
    except ValueError as err:
        return str(err)
    return "no error"


def _all_workers(rank: int, world_size: int) -> dict:
    """Every lab worker in one spawn (the spawn is the slow part)."""
    lm, ids = _lm()
    mlp, attn, x, stages, px, py = _layers(world_size)
    return {
        "count": _sends_and_reduces(rank, world_size),
        "dp": pc.data_parallel_worker(rank, world_size, lm, ids),
        "fsdp": pc.fsdp_adam_worker(rank, world_size, copy.deepcopy(lm), ids, 0.01),
        "fsdp_odd": _refusal(pc.fsdp_adam_worker, rank, world_size, copy.deepcopy(lm), ids[:3], 0.01),
        "tp": pc.tensor_parallel_worker(rank, world_size, mlp, attn, x),
        "pp": pc.pipeline_worker(rank, world_size, stages, px, py, 2),
    }


def test_lab_workers_equal_one_process_and_count_exactly():
    results = run_workers(_all_workers, 2, timeout=120)
    lm, ids = _lm()
    n_bytes = sum(p.numel() * 4 for p in lm.parameters())
    # count_communication
    keywords = [
        ("reduce_scatter_tensor", 4 * 2 * 2),
        ("all_gather_into_tensor", 4 * 3),
        ("reduce_scatter_tensor", 4 * 4 * 2),
        ("all_gather_into_tensor", 4 * 5),
    ]
    assert results[0]["count"] == [("all_reduce", 24), ("send", 20), *keywords]
    assert results[1]["count"] == [("all_reduce", 24), ("recv", 20), *keywords]
    # data parallel: the full-batch gradients, one all-reduce per parameter
    reference = copy.deepcopy(lm)
    reference(ids, labels=ids).loss.backward()
    for r in results:
        for key in ("by_hand", "ddp"):
            assert r["dp"][key].keys() == _grads(reference).keys()
            for n, g in _grads(reference).items():
                torch.testing.assert_close(r["dp"][key][n], g, **TOL)
        assert sum(b for _, b in r["dp"]["comm"]) == n_bytes
    # FSDP + Adam: one Adam step, each rank a half of the weights, grads and moments
    opt = torch.optim.Adam(reference.parameters(), lr=0.01)
    opt.step()
    for r in results:  # Adam divides by sqrt(v): a 1e-9 gradient difference on a ~0 gradient
        for n, p in reference.named_parameters():  # moves a weight by up to ~1e-6 (lr 1e-2)
            torch.testing.assert_close(r["fsdp"]["params"][n], p.detach(), rtol=0, atol=1e-4)
    assert sum(r["fsdp"]["param_bytes"] for r in results) == n_bytes
    assert sum(r["fsdp"]["grad_bytes"] for r in results) == n_bytes
    assert sum(r["fsdp"]["optim_bytes"] for r in results) == 2 * n_bytes
    # FSDP's traffic, counted: each block's weights all-gathered in forward and again in
    # backward, the root's (embeddings, final norm) once (FSDP2 keeps the root gathered
    # until backward), every gradient reduce-scattered; (W - 1) / W of each, in a ring
    root = sum(p.numel() * 4 for n, p in lm.named_parameters() if not n.startswith("blocks."))
    for r in results:
        assert {op for op, _ in r["fsdp"]["comm"]} == {"all_gather_into_tensor", "reduce_scatter_tensor"}
        assert pc.bytes_sent(r["fsdp"]["comm"], 2) == (3 * n_bytes - root) / 2
    for r in results:  # a batch of 3 on 2 ranks: unequal shards would average wrongly
        assert "batch size" in r["fsdp_odd"] and "world_size" in r["fsdp_odd"], r["fsdp_odd"]
    # tensor parallel: outputs and dL/dx equal; two all-reduces of (B, T, C) fp32 each
    mlp, attn, x, stages, px, py = _layers(2)
    for name, layer in (("mlp", mlp), ("attn", attn), ("mlp_dtensor", mlp)):
        xx = x.clone().requires_grad_(True)
        out = layer(xx)
        out.square().sum().backward()
        for r in results:
            torch.testing.assert_close(r["tp"][name]["out"], out.detach(), **TOL)
            torch.testing.assert_close(r["tp"][name]["x_grad"], xx.grad, **TOL)
            if name != "mlp_dtensor":
                assert r["tp"][name]["comm"] == [("all_reduce", x.numel() * 4)] * 2
    down_bias = sum(p.numel() * 4 for n, p in mlp.named_parameters() if n == "down_proj.bias")
    split = sum(p.numel() * 4 for p in mlp.parameters()) - down_bias
    assert [r["tp"]["mlp"]["param_bytes"] for r in results] == [split // 2 + down_bias] * 2
    # pipeline: stage gradients equal, one activation and one gradient per microbatch
    whole = nn.Sequential(*stages)
    loss = F.mse_loss(whole(px), py)
    loss.backward()
    for rank, r in enumerate(results):
        for key in ("by_hand", "gpipe"):
            for n, g in _grads(whole[rank]).items():
                torch.testing.assert_close(r["pp"][key]["grads"][n], g, **TOL)
        ops = sorted(op for op, _ in r["pp"]["comm"])
        assert ops == ["recv", "recv", "send", "send"]
        assert {b for _, b in r["pp"]["comm"]} == {2 * 8 * 4}
    torch.testing.assert_close(results[1]["pp"]["gpipe"]["loss"], loss.detach(), **TOL)


# ----------------------------------------------------------------------------- contracts (mutation review)


# broadcast is in _COUNTED and bytes_sent but never exercised
def test_broadcast_is_counted_and_sent_whole():
    assert pc.bytes_sent([("broadcast", 100)], 4) == 100
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pc.count_communication() as log:
            dist.broadcast(torch.ones(3), src=0)
    finally:
        dist.destroy_process_group()
    assert log == [("broadcast", 12)]


# GPipe runs the backwards in reverse microbatch order
def test_gpipe_schedule_runs_backwards_in_reverse_order():
    slots = pc.gpipe_schedule(3, 4)
    for stage in range(3):
        mine = sorted((s for s in slots if s.stage == stage), key=lambda s: s.start)
        assert [s.microbatch for s in mine if s.phase == "forward"] == [0, 1, 2, 3]
        assert [s.microbatch for s in mine if s.phase == "backward"] == [3, 2, 1, 0]


def test_counts_refuse_impossible_inputs():
    """(From a mutation review: each check could be dropped unnoticed.) Zero ranks gave -8
    bytes sent, a negative parameter count -160 bytes, a zero backward time empty slots."""
    with pytest.raises(ValueError, match="world_size"):
        pc.bytes_sent([("all_gather_into_tensor", 8)], 0)
    with pytest.raises(ValueError, match="n_params"):
        pc.zero_bytes_per_rank(-10, 2, 0)
    with pytest.raises(ValueError, match="t_backward"):
        pc.gpipe_schedule(2, 2, 1, 0)
