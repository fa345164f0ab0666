"""Tests for inference.parallel_timing: every strategy's trained weights and losses equal one
process's (one spawn of 2 ranks runs them all), and its bookkeeping is exact."""

from __future__ import annotations

import types

import pytest
import torch
import torch.distributed as dist

from llmfoundations.inference import parallel_timing as pt
from llmfoundations.inference.parallel import run_workers
from llmfoundations.layers import FeedForward

TOL = dict(rtol=1e-4, atol=1e-5)


def _data(d_model: int = 8, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, d_model, generator=g), torch.randn(batch, d_model, generator=g)


def test_every_strategy_trains_like_one_process():
    model, (x, y) = pt.mlp_stack(8, 16, 2), _data()
    steps = 3
    single = pt.train_single(model, x, y, steps)
    results = run_workers(
        pt.timed_steps_worker, 2, pt.STRATEGIES, model, x, y, 2, 1, 1e-3, 2, timeout=120
    )
    for strategy in pt.STRATEGIES:
        ranks = [r[strategy] for r in results]
        params = {**ranks[0]["params"], **ranks[1]["params"]}
        assert params.keys() == single["params"].keys(), strategy
        for name, p in single["params"].items():
            torch.testing.assert_close(params[name], p, **TOL, msg=f"{strategy} {name}")
        seen = [[r["losses"][i] for r in ranks if r["losses"][i] is not None] for i in range(steps)]
        losses = [sum(s) / len(s) for s in seen]  # equal shards: the mean is the full loss
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(single["losses"]), **TOL)
        assert all(len(r["times"]) == 2 for r in ranks)
    # model state per rank: sharded strategies hold half of the weights (biases aside)
    whole = single["bytes"]
    n_params = sum(p.numel() for p in model.parameters())
    assert whole == {"params": 4 * n_params, "grads": 4 * n_params, "optim": 8 * n_params}
    assert sum(r["fsdp2"]["bytes"]["params"] for r in results) == whole["params"]
    for r in results:
        assert r["ddp"]["bytes"] == whole
        assert r["pipeline_by_hand"]["bytes"]["params"] == whole["params"] // 2
        bias = 4 * 8 * 2  # the down_proj biases (2 layers x 8) are held whole by both ranks
        assert r["tp_by_hand"]["bytes"]["params"] == (whole["params"] - bias) // 2 + bias
        # counted traffic: DDP by hand is one ring all-reduce of every gradient
        assert r["ddp_by_hand"]["sent"] == pytest.approx(4 * n_params)
        assert r["ddp"]["sent"] == 0  # DDP's reducer calls its collectives from C++
        # FSDP2: every weight all-gathered in forward and again in backward, every gradient
        # reduce-scattered: three times (W - 1) / W of the weights
        assert r["fsdp2"]["sent"] == pytest.approx(3 * 4 * n_params / 2)


def test_train_single_leaves_the_model_alone():
    model, (x, y) = pt.mlp_stack(4, 8, 1), _data(4, 2)
    before = [p.clone() for p in model.parameters()]
    out = pt.train_single(model, x, y, 2)
    assert len(out["times"]) == len(out["losses"]) == 2
    for a, b in zip(before, model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_bad_arguments_are_named():
    model, (x, y) = pt.mlp_stack(4, 8, 2), _data(4, 4)
    with pytest.raises(ValueError, match="unknown strategy"):
        pt.timed_steps_worker(0, 2, ["zero"], model, x, y, 1)
    with pytest.raises(TypeError, match="strategies"):
        pt.timed_steps_worker(0, 2, "ddp", model, x, y, 1)
    with pytest.raises(TypeError, match="model"):
        pt.train_single(torch.nn.Linear(4, 4), x, y, 1)
    with pytest.raises(ValueError, match="x and y"):
        pt.train_single(model, x, y[:, :2], 1)
    with pytest.raises(ValueError, match="n_microbatches"):
        pt.timed_steps_worker(0, 2, ["pipeline_by_hand"], model, x, y, 1, n_microbatches=3)
    with pytest.raises(ValueError, match="n_layers"):
        pt.timed_steps_worker(0, 2, ["pipeline_gpipe"], pt.mlp_stack(4, 8, 3), x, y, 1)
    with pytest.raises(ValueError, match="steps"):
        pt.train_single(model, x, y, 0)
    with pytest.raises(ValueError, match="d_model"):
        pt.mlp_stack(0, 8, 1)


# ----------------------------------------------------------------------------- contracts (mutation review)


# pipelines over more blocks than ranks
def test_pipelines_hold_consecutive_blocks_named_as_in_the_stack():
    model = pt.mlp_stack(8, 16, 4)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 8, generator=g), torch.randn(8, 8, generator=g)
    single = pt.train_single(model, x, y, 1)
    strategies = ["pipeline_by_hand", "pipeline_gpipe"]
    results = run_workers(pt.timed_steps_worker, 2, strategies, model, x, y, 1, 0, 1e-3, 2, timeout=120)
    for strategy in strategies:
        params = {**results[0][strategy]["params"], **results[1][strategy]["params"]}
        assert params.keys() == single["params"].keys(), strategy
        for n, p in single["params"].items():
            torch.testing.assert_close(params[n], p, rtol=1e-4, atol=1e-5, msg=f"{strategy} {n}")


# ------------------------------------- from a mutation review (each kills a surviving mutant)
# Deterministic: a fake clock that only the code under test advances, and a one-rank gloo group
# in this process.

# one step on the fake clock: zero_grad 10 + forward of the one block 100 + Adam update 1
STEP = 111.0


@pytest.fixture
def ticking(monkeypatch):
    """A fake ``perf_counter`` that only moves when zero_grad (10), a FeedForward forward (100)
    or Adam's update (1) runs; ``events`` records each clock read and each barrier."""
    clock, events = [0.0], []

    def tick(dt):
        clock[0] += dt

    def perf_counter():
        events.append("clock")
        return clock[0]

    class TickingAdam(torch.optim.Adam):
        def zero_grad(self, *a, **k):
            tick(10.0)
            return super().zero_grad(*a, **k)

        def step(self, *a, **k):
            tick(1.0)
            return super().step(*a, **k)

    forward = FeedForward.forward

    def ticking_forward(self, x):
        tick(100.0)
        return forward(self, x)

    barrier = dist.barrier

    def recording_barrier(*a, **k):
        events.append("barrier")
        return barrier(*a, **k)

    monkeypatch.setattr(pt, "time", types.SimpleNamespace(perf_counter=perf_counter))
    monkeypatch.setattr(torch.optim, "Adam", TickingAdam)
    monkeypatch.setattr(FeedForward, "forward", ticking_forward)
    monkeypatch.setattr(dist, "barrier", recording_barrier)
    return events


@pytest.fixture
def one_rank():
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_train_single_times_each_whole_step_on_its_own(ticking):
    out = pt.train_single(pt.mlp_stack(4, 8, 1), *_data(4, 4), steps=3)
    assert out["times"] == [STEP, STEP, STEP]  # not cumulative, Adam's update included


def test_worker_times_each_whole_step_after_warmup_and_a_barrier(ticking, one_rank):
    model, (x, y) = pt.mlp_stack(4, 8, 1), _data(4, 4)
    out = pt.timed_steps_worker(0, 1, ["ddp_by_hand"], model, x, y, steps=2, warmup=2)
    assert out["ddp_by_hand"]["times"] == [STEP, STEP]  # not cumulative, update included
    # every rank starts the timed loop together: a barrier comes before the first clock read
    assert "barrier" in ticking[: ticking.index("clock")]


def test_worker_counts_traffic_for_its_own_world_size(one_rank):
    # one rank sends nothing in a ring all-reduce; a count made for 2 ranks would say 4 bytes
    # per parameter
    model, (x, y) = pt.mlp_stack(4, 8, 1), _data(4, 4)
    out = pt.timed_steps_worker(0, 1, ["ddp_by_hand"], model, x, y, steps=1, warmup=0)
    assert out["ddp_by_hand"]["sent"] == 0
