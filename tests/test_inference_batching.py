"""Tests of inference/batching.py: every request's tokens equal its own ``generate``
(greedy and sampled, random arrival traces, stop tokens, cancellation), equal
``transformers``' ``generate_batch``, all blocks back in the pool at the end, the token
budget and the running limit respected at every step, and clear errors."""

from __future__ import annotations

import doctest
import functools
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.generate import generate, generate_output
from llmfoundations.inference import batching
from llmfoundations.inference.batching import Engine, SchedulerConfig, TokenEvent
from llmfoundations.models import DecoderLM, ModelConfig
from llmfoundations.sampling import SamplingConfig

V = 53
MAX_SEQ_LEN = 32


@functools.cache
def _model(kind: str = "llama") -> DecoderLM:
    """A tiny fp32 model whose greedy outputs vary (weights N(0, 0.2), not the small
    default init, under which a random model repeats one token)."""
    torch.manual_seed(0)
    if kind == "llama":
        config = ModelConfig.llama(
            V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=MAX_SEQ_LEN
        )
    else:
        config = ModelConfig.gpt(V, d_model=32, n_layers=2, n_heads=4, max_seq_len=MAX_SEQ_LEN)
    model = DecoderLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.2)
    return model


def _prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _reference(model, prompt, n, stop=(), sampling=None, seed=None) -> list[int]:
    """The request's new tokens from ``generate`` alone (the stop token included)."""
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    out = generate_output(model, [prompt], n, stop_token_ids=stop, sampling=sampling, generator=gen)
    return out.new_tokens[0, : int(out.num_new_tokens[0])].tolist()


def _check_invariants(engine: Engine) -> None:
    """(d) the budget and running limit of the step just run; blocks within the pool."""
    config = engine.scheduler.config
    plan = engine.last_plan
    assert plan.num_tokens <= config.token_budget
    assert len(engine.scheduler.running) <= config.max_running
    assert len(plan.decode) + len({i for i, _ in plan.prefill}) <= config.max_running
    held = sum(len(engine.cache.block_table(s)) for s in engine.cache.sequences)
    assert held == engine.cache.num_used_blocks <= engine.cache.num_blocks


def test_doctests():
    result = doctest.testmod(batching, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ----------------------------------------------------------------------------- oracle: generate


SAMPLED = SamplingConfig(temperature=1.5)  # sensitive to any error in the logits


@settings(max_examples=40, deadline=None)  # about 20 per engine path (fast or not)
@given(
    requests=st.lists(
        st.tuples(
            st.integers(1, 10),  # prompt length
            st.integers(1, 8),  # max_new_tokens
            st.integers(0, 6),  # arrival step
            st.integers(-1, 7),  # index of the reference token used as a stop token (-1: none)
            st.booleans(),  # sampled (with its own seeded generator) or greedy
        ),
        min_size=1,
        max_size=5,
    ),
    budget=st.integers(2, 12),
    max_running=st.integers(1, 4),
    block_size=st.integers(1, 4),
    spare_blocks=st.integers(0, 6),
    chunked=st.booleans(),
    cancel=st.one_of(st.none(), st.tuples(st.integers(0, 4), st.integers(0, 8))),
    seed=st.integers(0, 2**16),
    fast=st.booleans(),  # the packed, planned path or the reference one
)
def test_each_request_equals_its_own_generate(
    requests, budget, max_running, block_size, spare_blocks, chunked, cancel, seed, fast
):
    """Random arrival traces: each finished request's tokens are exactly those of
    ``generate`` on it alone (greedy, or sampled with a generator seeded alike; the stop
    token included); a cancelled one holds a prefix of them. Every step respects the
    budget; every block is back in the pool at the end. Both engine paths (``fast``)."""
    model = _model()
    max_running = min(max_running, budget)
    if not chunked:
        requests = [(min(n, budget), *rest) for n, *rest in requests]
    prompts = [_prompt(n, seed + i) for i, (n, *_) in enumerate(requests)]
    samplings = [SAMPLED if sampled else None for *_, sampled in requests]

    def reference(i: int, stop=()) -> list[int]:
        return _reference(
            model, prompts[i], requests[i][1], stop=stop, sampling=samplings[i], seed=seed + i
        )

    plain = [reference(i) for i in range(len(requests))]
    stops = [
        (ref[k],) if 0 <= k < len(ref) else ()
        for ref, (*_, k, _) in zip(plain, requests, strict=True)
    ]
    refs = [reference(i, stop=stops[i]) for i in range(len(requests))]
    worst = max(
        -(-(len(p) + m - 1) // block_size) for p, (_, m, *_) in zip(prompts, requests, strict=True)
    )
    engine = Engine(
        model,
        num_blocks=worst + spare_blocks,  # tight pools make requests wait for blocks
        block_size=block_size,
        config=SchedulerConfig(
            token_budget=budget, max_running=max_running, chunked_prefill=chunked
        ),
        fast=fast,
    )
    streamed: dict[int, list[TokenEvent]] = {}
    ids: dict[int, int] = {}  # index in `requests` -> request id
    step = 0
    while len(ids) < len(requests) or engine.has_work:
        for i, (_, m, arrival, *_) in enumerate(requests):
            if arrival == step:
                ids[i] = engine.add_request(
                    prompts[i],
                    m,
                    stop_token_ids=stops[i],
                    sampling=samplings[i],
                    generator=torch.Generator().manual_seed(seed + i),
                    on_token=lambda e: streamed.setdefault(e.request_id, []).append(e),
                )
        if cancel is not None and cancel[1] == step and cancel[0] in ids:
            engine.cancel(ids[cancel[0]])
        events = engine.step()
        _check_invariants(engine)
        assert [e.request_id for e in events] == sorted({e.request_id for e in events})
        step += 1
        assert step < 200
    for i, request_id in ids.items():
        out = engine.output(request_id)
        events = streamed.get(request_id, [])
        assert [e.token for e in events] == out  # streaming saw every token, in order
        if engine.requests[request_id].status == "cancelled":
            assert out == refs[i][: len(out)]
            assert not any(e.finished for e in events)
        else:
            assert out == refs[i]
            assert [e.finished for e in events] == [False] * (len(out) - 1) + [True]
    # (c) every block is back in the pool, no sequence left
    assert engine.cache.num_free_blocks == engine.cache.num_blocks
    assert engine.cache.sequences == [] and not engine.has_work


@pytest.mark.parametrize("kind", ["llama", "gpt"])
def test_sampled_requests_equal_generate_with_the_same_generator(kind):
    """Sampling with a per-request generator: the same draws as ``generate`` alone with a
    generator seeded alike (one draw per token), while batched with greedy requests."""
    model = _model(kind)
    configs = [
        SamplingConfig(temperature=1.3),
        SamplingConfig(temperature=0.8, top_k=10, repetition_penalty=1.2),
        None,
        SamplingConfig(top_p=0.9),
    ]
    prompts = [_prompt(n, 10 + n) for n in (4, 7, 2, 9)]
    engine = Engine(
        model, num_blocks=40, block_size=4, config=SchedulerConfig(token_budget=6, max_running=4)
    )
    ids = []
    for i, (p, cfg) in enumerate(zip(prompts, configs, strict=True)):
        gen = torch.Generator().manual_seed(100 + i)
        ids.append(engine.add_request(p, 10, sampling=cfg, generator=gen))
        engine.step()  # the requests arrive one step apart
    outs = engine.run()
    for i, (p, cfg) in enumerate(zip(prompts, configs, strict=True)):
        assert outs[ids[i]] == _reference(model, p, 10, sampling=cfg, seed=100 + i)
    assert engine.cache.num_free_blocks == 40


def test_gpt_model_with_learned_positions_equals_generate():
    """Learned position embeddings: every row's positions must come from its own length."""
    model = _model("gpt")
    prompts = [_prompt(n, n) for n in (1, 6, 11)]
    engine = Engine(
        model, num_blocks=30, block_size=3, config=SchedulerConfig(token_budget=5, max_running=3)
    )
    ids = [engine.add_request(p, 9) for p in prompts]
    outs = engine.run()
    assert [outs[i] for i in ids] == [_reference(model, p, 9) for p in prompts]


# ----------------------------------------------------------------------------- scheduling


def test_long_prompt_is_prefilled_in_chunks_beside_decodes():
    model = _model()
    engine = Engine(
        model, num_blocks=20, block_size=4, config=SchedulerConfig(token_budget=4, max_running=2)
    )
    a = engine.add_request(_prompt(2, 1), 8)
    engine.step()  # a: prefill of 2 tokens, first token
    b = engine.add_request(_prompt(10, 2), 3)
    plans = []
    while engine.requests[b].is_prefilling or engine.requests[b].status == "waiting":
        engine.step()
        plans.append(engine.last_plan)
    # a decodes every step; b's prompt comes in chunks of what the budget leaves (4 - 1)
    assert [(p.decode, p.prefill) for p in plans] == [
        ([a], [(b, 3)]),
        ([a], [(b, 3)]),
        ([a], [(b, 3)]),
        ([a], [(b, 1)]),
    ]
    assert engine.output(b) == _reference(model, _prompt(10, 2), 3)[:1]
    assert engine.run()[b] == _reference(model, _prompt(10, 2), 3)


def test_without_chunking_a_prompt_waits_for_a_step_with_room():
    """No chunking: b's prompt does not fit in what the budget leaves, so it waits for a step
    with room, and c (which would fit) waits behind it rather than overtaking it."""
    engine = Engine(
        _model(),
        num_blocks=20,
        block_size=4,
        config=SchedulerConfig(token_budget=6, max_running=3, chunked_prefill=False),
    )
    a = engine.add_request(_prompt(3, 1), 5)
    b = engine.add_request(_prompt(4, 2), 5)
    c = engine.add_request(_prompt(2, 3), 5)
    engine.step()
    assert engine.last_plan.prefill == [(a, 3)] and engine.requests[b].status == "waiting"
    assert engine.requests[c].status == "waiting"  # 3 left: b (4) waits, and so does c (2)
    engine.step()
    assert (engine.last_plan.decode, engine.last_plan.prefill) == ([a], [(b, 4)])
    engine.step()
    assert (engine.last_plan.decode, engine.last_plan.prefill) == ([a, b], [(c, 2)])


def test_admission_waits_for_blocks_and_a_finished_request_frees_them():
    """The pool holds one request's worst case: the second waits until the first ends,
    and is admitted in the very step after the first one's blocks came back."""
    model = _model()
    p = 4
    prompt_a, prompt_b = _prompt(5, 1), _prompt(6, 2)
    engine = Engine(model, num_blocks=3, block_size=p, config=SchedulerConfig(token_budget=16))
    a = engine.add_request(prompt_a, 6)  # 5 + 6 - 1 = 10 positions: 3 blocks
    b = engine.add_request(prompt_b, 4)  # 9 positions: 3 blocks
    steps_a_running = 0
    while engine.requests[a].status == "running" or steps_a_running == 0:
        engine.step()
        steps_a_running += 1
        if engine.requests[a].status == "running":
            assert engine.requests[b].status == "waiting"
            assert engine.cache.num_used_blocks == -(
                -engine.cache.length(engine.requests[a].seq_id) // p
            )
    assert steps_a_running == 6 and engine.cache.num_free_blocks == 3  # a's blocks came back
    engine.step()
    assert engine.last_plan.admitted == [b]
    outs = engine.run()
    assert outs[a] == _reference(model, prompt_a, 6) and outs[b] == _reference(model, prompt_b, 4)


def test_running_limit_and_budget_hold_with_many_requests():
    engine = Engine(
        _model(), num_blocks=64, block_size=2, config=SchedulerConfig(token_budget=5, max_running=3)
    )
    for i in range(7):
        engine.add_request(_prompt(1 + i, i), 1 + i % 4)
    steps = 0
    while engine.has_work:
        engine.step()
        _check_invariants(engine)
        steps += 1
    assert steps < 40 and engine.cache.num_free_blocks == 64


def test_stream_yields_every_token_and_cancel_frees_blocks():
    model = _model()
    engine = Engine(model, num_blocks=20, block_size=2, config=SchedulerConfig(token_budget=8))
    a = engine.add_request(_prompt(3, 1), 12)
    b = engine.add_request(_prompt(4, 2), 3)
    events = []
    for event in engine.stream():
        events.append(event)
        if len(engine.output(a)) == 4 and engine.requests[a].status == "running":
            assert engine.cancel(a) is True
            assert engine.requests[a].seq_id is None
    assert engine.requests[a].status == "cancelled" and len(engine.output(a)) == 4
    assert engine.output(a) == _reference(model, _prompt(3, 1), 12)[:4]
    assert [e.token for e in events if e.request_id == b] == _reference(model, _prompt(4, 2), 3)
    assert engine.cancel(a) is False and engine.cancel(b) is False  # already over
    assert engine.cache.num_free_blocks == 20


def test_cancel_a_waiting_request_and_cancel_from_a_callback():
    engine = Engine(
        _model(), num_blocks=20, block_size=2, config=SchedulerConfig(token_budget=4, max_running=1)
    )
    a = engine.add_request(_prompt(3, 1), 5, on_token=lambda e: engine.cancel(b))
    b = engine.add_request(_prompt(2, 2), 5)
    c = engine.add_request(_prompt(2, 3), 2)
    engine.cancel(c)  # still waiting
    outs = engine.run()
    assert outs[b] == [] and outs[c] == [] and len(outs[a]) == 5
    assert engine.requests[b].status == engine.requests[c].status == "cancelled"
    assert engine.cache.num_free_blocks == 20 and "waiting=0" in repr(engine)


def test_a_callback_that_cancels_a_running_request_stops_it_from_the_next_step():
    model = _model()
    engine = Engine(model, num_blocks=20, block_size=2, config=SchedulerConfig(token_budget=8))
    b = None

    def cancel_b(event):
        if len(engine.output(event.request_id)) == 2:  # a's second token: b is decoding too
            assert engine.cancel(b) is True

    a = engine.add_request(_prompt(3, 1), 6, on_token=cancel_b)
    b = engine.add_request(_prompt(2, 2), 6)
    events = list(engine.stream())
    b_tokens = [e.token for e in events if e.request_id == b]
    assert b_tokens == engine.output(b) == _reference(model, _prompt(2, 2), 6)[:2]  # then none
    assert engine.output(a) == _reference(model, _prompt(3, 1), 6)
    assert engine.requests[b].status == "cancelled" and engine.cache.num_free_blocks == 20


def test_a_callback_that_raises_leaves_every_other_request_correct():
    model = _model()
    engine = Engine(model, num_blocks=20, block_size=2, config=SchedulerConfig(token_budget=8))

    def fail_once(event):
        if len(engine.output(event.request_id)) == 2 and not failed:
            failed.append(event)
            raise RuntimeError("a client went away")

    failed: list[TokenEvent] = []
    seen_by_b: list[int] = []
    a = engine.add_request(_prompt(3, 1), 5, on_token=fail_once)
    b = engine.add_request(_prompt(4, 2), 5, on_token=lambda e: seen_by_b.append(e.token))
    with pytest.raises(RuntimeError, match="went away"):
        engine.run()
    assert len(engine.output(b)) == 2  # b's token of that step was recorded before a's callback
    assert seen_by_b == engine.output(b)  # and b's callback still got it
    outs = engine.run()
    assert seen_by_b == outs[b]
    assert outs[a] == _reference(model, _prompt(3, 1), 5)
    assert outs[b] == _reference(model, _prompt(4, 2), 5)
    assert engine.cache.num_free_blocks == 20


def test_admission_counts_the_blocks_a_running_request_already_holds():
    # 5 blocks of 4. a: at most 4 + 5 - 1 = 8 positions, 2 blocks, 1 held after its prefill,
    # so 1 more promised and 4 - 1 = 3 spare; b: 5 + 8 - 1 = 12 positions, 3 blocks: it fits
    # now. Counting a's 2 blocks as still to come would leave 2 spare and make b wait.
    engine = Engine(
        _model(), num_blocks=5, block_size=4, config=SchedulerConfig(token_budget=16, max_running=4)
    )
    engine.add_request(_prompt(4, 1), 5)
    engine.step()
    b = engine.add_request(_prompt(5, 2), 8)
    engine.step()
    assert engine.last_plan.admitted == [b]


def test_partly_prefilled_prompts_keep_their_arrival_order():
    engine = Engine(
        _model(), num_blocks=30, block_size=4, config=SchedulerConfig(token_budget=5, max_running=3)
    )
    a = engine.add_request(_prompt(12, 1), 2)
    b = engine.add_request(_prompt(12, 2), 2)
    plans = []
    for _ in range(4):
        engine.step()
        plans.append(engine.last_plan.prefill)
    # the budget goes to a's prompt first, the rest to b's, step after step
    assert plans == [[(a, 5)], [(a, 5)], [(a, 2), (b, 3)], [(b, 4)]]


def test_a_generator_on_another_device_is_refused():
    engine = Engine(_model(), num_blocks=4, block_size=4)
    engine._device = torch.device("meta")  # as if the model were on another device
    with pytest.raises(ValueError, match="generator is on cpu, the model on meta"):
        engine.add_request([1, 2], 2, generator=torch.Generator())


def test_callbacks_may_cancel_a_finished_request_and_add_new_ones():
    model = _model()
    engine = Engine(model, num_blocks=20, block_size=2, config=SchedulerConfig(token_budget=8))
    late: list[int] = []
    cancelled: list[bool] = []

    def on_a(event):
        cancelled.append(engine.cancel(b))  # b ends in this same step (1 token): too late
        if not late:
            late.append(engine.add_request(_prompt(2, 3), 3))

    a = engine.add_request(_prompt(3, 1), 2, on_token=on_a)
    b = engine.add_request(_prompt(2, 2), 1)
    outs = engine.run()
    assert cancelled[0] is False and engine.requests[b].status == "finished"
    assert outs[b] == _reference(model, _prompt(2, 2), 1)
    assert outs[a] == _reference(model, _prompt(3, 1), 2)
    assert outs[late[0]] == _reference(model, _prompt(2, 3), 3)
    assert engine.cache.num_free_blocks == 20


def test_release_forgets_finished_requests_and_refuses_running_ones():
    model = _model()
    engine = Engine(model, num_blocks=20, block_size=2, config=SchedulerConfig(token_budget=8))
    sent: list[list[int]] = []

    def send_b(event):  # a server sends b's answer, from a's callback, in the step b ends
        if b in engine.requests and engine.requests[b].is_done:
            sent.append(engine.release(b))

    a = engine.add_request(_prompt(3, 1), 4, on_token=send_b)
    b = engine.add_request(_prompt(2, 2), 1)  # ends in the first step, sorted after a
    with pytest.raises(ValueError, match="request 0 is still waiting: cancel it before release"):
        engine.release(a)
    engine.step()
    assert sent == [_reference(model, _prompt(2, 2), 1)] and set(engine.requests) == {a}
    with pytest.raises(ValueError, match="still running"):
        engine.release(a)
    with pytest.raises(ValueError, match=r"request_id 1 is unknown \(ids 0 .. 1 were given and it was released\)"):
        engine.output(b)
    assert engine.run() == {a: _reference(model, _prompt(3, 1), 4)}
    assert engine.release(a) == _reference(model, _prompt(3, 1), 4) and engine.requests == {}
    c = engine.add_request([1, 2], 1)
    assert c == 2 and engine.cancel(c) and engine.release(c) == []  # ids are never reused
    with pytest.raises(TypeError, match="request_id must be an int"):
        engine.release("0")
    assert engine.cache.num_free_blocks == 20


def test_training_mode_is_restored():
    model = _model()
    model.train()
    try:
        engine = Engine(model, num_blocks=8, block_size=4)
        engine.add_request([1, 2], 2)
        assert engine.run()[0] == _reference(model.eval(), [1, 2], 2)
        model.train()
        engine.add_request([1, 2], 1)
        engine.step()
        assert model.training
    finally:
        model.eval()


# ----------------------------------------------------------------------------- bad requests


def test_bad_requests_raise_clear_errors():
    engine = Engine(
        _model(),
        num_blocks=4,
        block_size=4,
        config=SchedulerConfig(token_budget=8, chunked_prefill=False),
    )
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.add_request([], 3)
    with pytest.raises(ValueError, match="max_seq_len=32"):
        engine.add_request([1] * 33, 1)  # the prompt alone is longer than the model
    with pytest.raises(ValueError, match="max_seq_len=32"):
        engine.add_request([1] * 20, 20)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        engine.add_request([1, 2], 0)
    with pytest.raises(TypeError, match="max_new_tokens"):
        engine.add_request([1, 2], 2.0)
    with pytest.raises(ValueError, match="outside \\[0, vocab_size=53\\)"):
        engine.add_request([1, 53], 2)
    with pytest.raises(TypeError, match="prompt must hold ints"):
        engine.add_request([1, "a"], 2)
    with pytest.raises(TypeError, match="prompt must be a list"):
        engine.add_request("hello", 2)
    with pytest.raises(ValueError, match="1-D"):
        engine.add_request(torch.ones(1, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="stop_token_ids must be < vocab_size"):
        engine.add_request([1], 2, stop_token_ids=[99])
    with pytest.raises(TypeError, match="sampling"):
        engine.add_request([1], 2, sampling="greedy")
    with pytest.raises(TypeError, match="generator"):
        engine.add_request([1], 2, generator=0)
    with pytest.raises(TypeError, match="on_token"):
        engine.add_request([1], 2, on_token=3)
    with pytest.raises(ValueError, match="needs 5 blocks of 4, the pool has 4"):
        engine.add_request([1] * 10, 8)
    with pytest.raises(ValueError, match="exceeds token_budget=8 and chunked_prefill is off"):
        engine.add_request([1] * 9, 1)
    with pytest.raises(ValueError, match="request_id 7 is unknown"):
        engine.cancel(7)
    with pytest.raises(TypeError, match="request_id must be an int"):
        engine.cancel("0")
    assert engine.requests == {} and not engine.has_work  # nothing was queued
    assert engine.add_request(torch.tensor([1, 2]), 1) == 0  # a 1-D tensor is fine


def test_bad_configs():
    with pytest.raises(ValueError, match="max_running=9 must be <= token_budget=8"):
        SchedulerConfig(token_budget=8, max_running=9)
    with pytest.raises(ValueError, match="token_budget"):
        SchedulerConfig(token_budget=0)
    with pytest.raises(TypeError, match="chunked_prefill"):
        SchedulerConfig(chunked_prefill=1)
    with pytest.raises(TypeError, match="config must be a SchedulerConfig"):
        Engine(_model(), 4, 4, config={"token_budget": 4})
    with pytest.raises(TypeError, match="model"):
        Engine(torch.nn.Linear(2, 2), 4, 4)


# ----------------------------------------------------------------------------- oracle: transformers


@pytest.mark.slow
def test_equals_transformers_generate_batch(hf_llama_copy):
    """transformers' own continuous batching (``generate_batch``, paged cache, greedy) on
    the same weights gives the same tokens as our engine, request for request."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "ContinuousBatchingConfig"):
        pytest.skip(
            f"transformers {transformers.__version__} has no ContinuousBatchingConfig "
            "(generate_batch's paged-cache settings)"
        )
    model = _model()
    hf = hf_llama_copy(model)
    prompts = [_prompt(n, 40 + n) for n in (3, 9, 1, 6)]
    start = time.perf_counter()
    out = hf.generate_batch(
        inputs=prompts,
        generation_config=transformers.GenerationConfig(
            max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0
        ),
        continuous_batching_config=transformers.ContinuousBatchingConfig(
            page_size=4, num_blocks=32, max_batch_tokens=16, max_requests_per_batch=4
        ),
    )
    assert time.perf_counter() - start < 120
    theirs = {tuple(o.prompt_ids): list(o.generated_tokens) for o in out.values()}
    engine = Engine(
        model, num_blocks=32, block_size=4, config=SchedulerConfig(token_budget=6, max_running=3)
    )
    ids = [engine.add_request(p, 8) for p in prompts]
    ours = engine.run()
    assert [ours[i] for i in ids] == [theirs[tuple(p)] for p in prompts]
    assert [ours[i] for i in ids] == [
        generate(model, [p], 8)[0, len(p) :].tolist() for p in prompts
    ]


def test_nan_logits_raise_a_clear_error():
    model = DecoderLM(_model().config).eval()
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    engine = Engine(model, num_blocks=4, block_size=4)
    engine.add_request([1, 2], 2)
    with pytest.raises(ValueError, match="NaN"):
        engine.step()


def test_fast_engine_computes_logits_for_the_last_position_only():
    """fast=True: a prefill chunk of T tokens asks the output layer for one position (not T), and the
    hook that does it is gone after each step: the model's own forward is unchanged. The two
    prompts are prefilled in one packed row: one position each (2, not 7 + 2); then decode
    steps of one position per running row."""
    model = _model()  # shared (cached): the recording hook is removed below
    rows: list[tuple[int, ...]] = []
    handle = model.lm_head.register_forward_hook(
        lambda _m, _a, out: rows.append(tuple(out.shape[:2]))
    )
    try:
        engine = Engine(model, num_blocks=8, block_size=4, fast=True)
        engine.add_request(_prompt(7, seed=1), max_new_tokens=3)
        engine.add_request(_prompt(2, seed=2), max_new_tokens=2)
        engine.run()
    finally:
        handle.remove()
    assert rows == [(1, 2), (2, 1), (1, 1)]  # (rows, positions) per pass
    with torch.no_grad():
        assert model(torch.tensor([_prompt(7, seed=1)])).logits.shape == (1, 7, V)


@pytest.mark.parametrize("kind", ["llama", "gpt"])
def test_fast_engine_gives_the_reference_engines_tokens(kind):
    """fast=True (planned views, last-position logits) vs the reference engine: the same
    tokens, steps and blocks, on ragged prompts with chunked prefill."""
    model = _model(kind)
    runs = []
    for fast in (False, True):
        config = SchedulerConfig(token_budget=6, max_running=3)
        engine = Engine(model, num_blocks=20, block_size=4, config=config, fast=fast)
        for n, new in ((5, 4), (9, 3), (2, 6), (4, 2)):
            engine.add_request(_prompt(n, seed=n), max_new_tokens=new)
        runs.append((engine.run(), engine.step_count, engine.cache.num_free_blocks))
    assert runs[0] == runs[1]
    with pytest.raises(TypeError, match="fast must be a bool"):
        Engine(model, num_blocks=4, block_size=4, fast=1)


class _Wrapped(torch.nn.Module):
    """A model without ``forward_unchecked``: the fast engine cannot pack its steps."""

    def __init__(self, inner: DecoderLM) -> None:
        super().__init__()
        self.inner, self.config, self.lm_head = inner, inner.config, inner.lm_head
        self.train(inner.training)  # (a new module trains: the engine would restore that)

    def forward(self, ids, **kwargs):
        return self.inner(ids, **kwargs)


def test_fast_engine_on_a_model_it_cannot_pack_still_equals_generate():
    model = _model()
    engine = Engine(
        _Wrapped(model), 30, 4, SchedulerConfig(token_budget=5, max_running=3), fast=True
    )
    assert not engine._can_pack
    prompts = [_prompt(n, n) for n in (3, 9, 1)]
    ids = [engine.add_request(p, 6) for p in prompts]
    outs = engine.run()
    assert [outs[i] for i in ids] == [_reference(model, p, 6) for p in prompts]


@pytest.mark.parametrize("kind", ["llama", "gpt"])
def test_fast_engine_packs_each_prefilling_step_into_one_pass(kind, monkeypatch):
    """fast=True runs a step that prefills as one packed forward pass (decode rows and
    prefill chunks together): one call of the output layer per step, every row's logits
    equal the reference engine's for that step within fp32 rounding, and the same tokens
    (greedy, sampled with a generator, and with a repetition penalty)."""
    model = _model(kind)
    seen: list[tuple[bool, int, int, torch.Tensor]] = []  # (fast, step, seq_id, logits row)
    check = Engine._check_finite

    def record(self, logits, seq_ids):
        for row, seq_id in enumerate(seq_ids):
            seen.append((self.fast, self.step_count, seq_id, logits[row].clone()))
        check(self, logits, seq_ids)

    monkeypatch.setattr(Engine, "_check_finite", record)
    samplings = [
        None,
        SamplingConfig(temperature=0.8, top_k=10),
        None,
        SamplingConfig(do_sample=False, repetition_penalty=1.3),
        None,
    ]
    outputs, passes = [], []
    for fast in (False, True):
        calls: list[int] = []
        handle = model.lm_head.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        try:
            config = SchedulerConfig(token_budget=7, max_running=4)
            engine = Engine(model, num_blocks=24, block_size=3, config=config, fast=fast)
            for i, (n, new) in enumerate(((5, 4), (9, 3), (2, 6), (4, 5), (11, 2))):
                gen = torch.Generator().manual_seed(i) if samplings[i] else None
                engine.add_request(
                    _prompt(n, seed=n), max_new_tokens=new, sampling=samplings[i], generator=gen
                )
            outputs.append(engine.run())
        finally:
            handle.remove()
        passes.append((len(calls), engine.step_count))
    assert outputs[0] == outputs[1]
    assert passes[1][0] == passes[1][1] < passes[0][0]  # one pass per step, fewer than before
    ref = {(step, seq): row for fast, step, seq, row in seen if not fast}
    got = {(step, seq): row for fast, step, seq, row in seen if fast}
    assert ref.keys() == got.keys()
    for key, row in got.items():
        torch.testing.assert_close(row, ref[key], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- contracts (second mutation review: 82 mutants, 24 gaps)


def test_config_minimums_and_the_equal_boundary():
    """token_budget and max_running must be >= 1 (a max_running of 0 would admit nothing and
    ``run`` would spin forever); max_running == token_budget is allowed."""
    with pytest.raises(ValueError, match="token_budget must be >= 1"):
        SchedulerConfig(token_budget=0, max_running=0)
    with pytest.raises(ValueError, match="max_running must be >= 1"):
        SchedulerConfig(token_budget=4, max_running=0)
    assert SchedulerConfig(token_budget=3, max_running=3).max_running == 3


def test_bad_prompt_tokens_are_refused_before_queueing():
    """Negative ids (an embedding would wrap or fail mid-step), bools and bytes are refused
    by add_request, and nothing is queued."""
    engine = Engine(_model(), num_blocks=8, block_size=4)
    with pytest.raises(ValueError, match="outside \\[0, vocab_size=53\\)"):
        engine.add_request([1, -1], 2)
    with pytest.raises(TypeError, match="prompt must hold ints"):
        engine.add_request([1, True], 2)
    with pytest.raises(TypeError, match="prompt must be a list"):
        engine.add_request(b"\x01\x02", 2)  # bytes are a Sequence of ints
    with pytest.raises(TypeError, match="request_id must be an int"):
        engine.cancel(False)  # a bool is not an id (False == 0)
    with pytest.raises(TypeError, match="request_id must be an int"):
        engine.output(True)
    assert engine.requests == {} and not engine.has_work


def test_a_request_that_fills_max_seq_len_exactly_is_accepted():
    """prompt + max_new_tokens = max_seq_len + 1 writes max_seq_len positions (the last token
    is never fed back): allowed, as in generate, and gives generate's tokens."""
    model = _model()
    prompt = _prompt(16, 5)
    engine = Engine(model, num_blocks=8, block_size=4, config=SchedulerConfig(token_budget=8))
    a = engine.add_request(prompt, MAX_SEQ_LEN + 1 - 16)
    assert engine.run()[a] == _reference(model, prompt, MAX_SEQ_LEN + 1 - 16)


# ----------------------------------------------------------------------------- scheduling


def test_a_request_waiting_for_blocks_holds_back_later_ones():
    """First come first served: b waits for blocks, so c, which would fit, waits behind it
    (no overtaking), and b is admitted before c."""
    model = _model()
    engine = Engine(
        model, num_blocks=6, block_size=4, config=SchedulerConfig(token_budget=16, max_running=4)
    )
    prompts = [_prompt(4, 1), _prompt(5, 2), _prompt(2, 3)]
    a = engine.add_request(prompts[0], 8)  # 11 positions: 3 blocks
    b = engine.add_request(prompts[1], 12)  # 16 positions: 4 blocks, only 3 spare
    c = engine.add_request(prompts[2], 2)  # 3 positions: 1 block, would fit
    engine.step()
    assert engine.last_plan.admitted == [a]
    assert engine.requests[b].status == engine.requests[c].status == "waiting"
    admitted = []
    while engine.has_work:
        engine.step()
        admitted += engine.last_plan.admitted
    assert admitted == [b, c]
    outs = engine.run()
    assert [outs[i] for i in (a, b, c)] == [
        _reference(model, p, n) for p, n in zip(prompts, (8, 12, 2), strict=True)
    ]


# ----------------------------------------------------------------------------- engine contract


def test_callbacks_that_raise_the_first_error_is_raised_after_all_ran():
    engine = Engine(_model(), num_blocks=20, block_size=2, config=SchedulerConfig(token_budget=8))
    called: list[int] = []

    def boom(message):
        def on_token(event):
            called.append(event.request_id)
            raise RuntimeError(message)

        return on_token

    a = engine.add_request(_prompt(3, 1), 2, on_token=boom("first"))
    b = engine.add_request(_prompt(2, 2), 2, on_token=boom("second"))
    with pytest.raises(RuntimeError, match="first"):
        engine.step()
    assert called == [a, b]


def test_output_and_run_return_copies():
    """Changing what output or run returned does not change the engine's requests."""
    model = _model()
    engine = Engine(model, num_blocks=20, block_size=2, config=SchedulerConfig(token_budget=8))
    a = engine.add_request(_prompt(3, 1), 5)
    engine.step()
    engine.output(a).clear()  # a caller's list, not the engine's
    outs = engine.run()
    assert outs[a] == _reference(model, _prompt(3, 1), 5)
    outs[a].append(0)
    assert engine.output(a) == engine.run()[a] == _reference(model, _prompt(3, 1), 5)


def test_an_eval_model_stays_in_eval_mode():
    model = _model()
    assert not model.training
    engine = Engine(model, num_blocks=8, block_size=4)
    engine.add_request([1, 2], 2)
    engine.step()
    assert not model.training


def test_a_training_model_runs_in_eval_mode():
    """A model in train mode with dropout: the step runs it in eval mode (no dropout), so
    the tokens are generate's on the eval model, and train mode is back afterwards."""
    base = _model()
    config = ModelConfig.llama(
        V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=MAX_SEQ_LEN, dropout=0.5
    )
    model = DecoderLM(config)
    model.load_state_dict(base.state_dict())
    model.train()
    engine = Engine(model, num_blocks=20, block_size=4, config=SchedulerConfig(token_budget=8))
    prompts = [_prompt(5, 1), _prompt(3, 2)]
    ids = [engine.add_request(p, 6) for p in prompts]
    outs = engine.run()
    assert model.training
    assert [outs[i] for i in ids] == [_reference(base, p, 6) for p in prompts]


@pytest.mark.parametrize("fast", [False, True])
def test_steps_build_no_autograd_graph(fast):
    """The cache pools are written under no_grad: they never require grad (otherwise every
    step would extend an autograd graph kept alive by the pool)."""
    engine = Engine(_model(), num_blocks=8, block_size=4, fast=fast)
    engine.add_request(_prompt(5, 1), 3)
    engine.add_request(_prompt(2, 2), 3)
    engine.step()
    engine.step()
    assert not any(p.requires_grad for p in engine.cache.k_pools + engine.cache.v_pools)


# ----------------------------------------------------------------------------- logits checks


def _edit_logits(model, edit):
    """A forward hook on the output layer that edits its output (B, T, V) in place."""

    def hook(_module, _args, out):
        edit(out)
        return out

    return model.lm_head.register_forward_hook(hook)


@pytest.mark.parametrize("fast", [False, True])
def test_plus_inf_and_all_minus_inf_logits_raise_but_some_minus_inf_are_fine(fast):
    model = _model()

    def run(edit):
        engine = Engine(model, num_blocks=8, block_size=4, fast=fast)
        engine.add_request(_prompt(5, 1), 4)
        engine.add_request(_prompt(3, 2), 4)
        handle = _edit_logits(model, edit)
        try:
            return engine.run()
        finally:
            handle.remove()

    with pytest.raises(ValueError, match="NaN or \\+inf"):
        run(lambda out: out[..., 7].fill_(float("inf")))
    with pytest.raises(ValueError, match="only -inf"):
        run(lambda out: out.fill_(float("-inf")))
    # a model may rule tokens out with -inf (here every even id): not an error
    outs = run(lambda out: out[..., ::2].fill_(float("-inf")))
    assert all(t % 2 == 1 for tokens in outs.values() for t in tokens)


def test_nan_logits_in_one_row_of_a_batch_raise():
    """One bad row among the decoding rows is enough to raise (not only an all-NaN batch)."""
    model = _model()
    engine = Engine(model, num_blocks=8, block_size=4)
    engine.add_request(_prompt(5, 1), 4)
    engine.add_request(_prompt(3, 2), 4)
    engine.step()  # both prefilled (one pass each)
    handle = _edit_logits(model, lambda out: out[1:].fill_(float("nan")) if len(out) > 1 else None)
    try:
        with pytest.raises(ValueError, match="NaN"):
            engine.step()  # one decode pass, 2 rows: the second one is NaN
    finally:
        handle.remove()


def _fail_once(model, where: str, skip: int):
    """Make a forward pass that feeds prompt chunks (T > 1) fail once, after ``skip`` such
    passes succeeded: its logits NaN (``"logits"``) or an error raised by the second block
    after the first one wrote its keys (``"layer"``)."""
    passes = [0]

    def hook(_module, args, out):
        if args[0].shape[1] > 1:
            passes[0] += 1
            if passes[0] == skip + 1:
                if where == "logits":
                    out.fill_(float("nan"))
                else:
                    raise RuntimeError("interrupted")
        return out

    module = model.lm_head if where == "logits" else model.blocks[1]
    return module.register_forward_hook(hook)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("where", ["logits", "layer"])
def test_a_failed_step_leaves_every_request_as_it_was(fast, where):
    """A step whose forward fails after some keys were written (the decodes and the first
    prefill chunk before the second one, or the first block before the second) is undone:
    run again, every request still equals its own generate (without the undo, a decoding
    request fed its last token twice, and a prompt chunk was fed twice; a sampled request
    drew from its generator before the pass that failed, and drew again when rerun)."""
    model = _model()
    engine = Engine(
        model, num_blocks=24, block_size=4, config=SchedulerConfig(token_budget=12), fast=fast
    )
    hot = SamplingConfig(temperature=1.3)
    a = engine.add_request(_prompt(5, 1), 6, sampling=hot, generator=torch.Generator().manual_seed(7))
    engine.step()  # a prefilled
    # next step: a decodes; b's prompt and c's first chunk (one pass each, or one packed)
    b = engine.add_request(_prompt(4, 2), 4)
    c = engine.add_request(_prompt(9, 3), 4)
    lengths = {s: engine.cache.length(s) for s in engine.cache.sequences}
    handle = _fail_once(model, where, skip=0 if fast else 1)
    try:
        with pytest.raises((ValueError, RuntimeError), match="NaN|interrupted"):
            engine.step()
    finally:
        handle.remove()
    assert all(engine.cache.length(s) == lengths.get(s, 0) for s in engine.cache.sequences)
    assert [engine.requests[i].num_prefilled for i in (b, c)] == [0, 0]
    assert [len(engine.output(i)) for i in (a, b, c)] == [1, 0, 0]
    out = engine.run()
    assert out[a] == _reference(model, _prompt(5, 1), 6, sampling=hot, seed=7)
    assert out[b] == _reference(model, _prompt(4, 2), 4)
    assert out[c] == _reference(model, _prompt(9, 3), 4)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("fail_at", [2, 5])
def test_a_step_interrupted_while_choosing_is_undone(fast, fail_at):
    """An interrupt while a step's tokens are chosen (call ``fail_at`` of the sampler: at 2,
    after one sampled request drew from its own generator and one from the global one) is
    undone as a failed forward pass is: run again, every output equals a run never stopped
    (without the undo, the prompts' keys stayed written with no token recorded, and the
    generators stayed advanced)."""
    model = _model()
    hot = SamplingConfig(temperature=1.3)

    def run(fail_at: int | None) -> dict[int, list[int]]:
        torch.manual_seed(11)  # the second request samples from the global generator
        engine = Engine(
            model, num_blocks=24, block_size=4, config=SchedulerConfig(token_budget=12), fast=fast
        )
        mine = torch.Generator().manual_seed(7)
        engine.add_request(_prompt(5, 1), 6, sampling=hot, generator=mine)
        engine.add_request(_prompt(4, 2), 6, sampling=hot)
        engine.add_request(_prompt(6, 3), 6)  # greedy
        calls, choose = [0], engine._choose

        def failing(request, logits):
            token = choose(request, logits)
            calls[0] += 1
            if calls[0] == fail_at:
                raise KeyboardInterrupt
            return token

        engine._choose = failing
        if fail_at is not None:
            with pytest.raises(KeyboardInterrupt):
                engine.run()
        return engine.run()

    assert run(fail_at) == run(None)


class _NoHead(torch.nn.Module):
    """A model that can pack (``forward_unchecked``) but has no ``lm_head`` attribute: the fast
    engine cannot trim its logits with a hook and must pick each row's last position itself."""

    def __init__(self, inner: DecoderLM) -> None:
        super().__init__()
        self.inner, self.config = inner, inner.config
        self.train(inner.training)  # (a new module trains: the engine would restore that)

    def forward(self, ids, **kwargs):
        return self.inner(ids, **kwargs)

    def forward_unchecked(self, ids, **kwargs):
        return self.inner.forward_unchecked(ids, **kwargs)


def test_fast_engine_packs_a_model_without_lm_head():
    model = _model()
    engine = Engine(
        _NoHead(model), 30, 4, SchedulerConfig(token_budget=6, max_running=3), fast=True
    )
    assert engine._can_pack
    prompts = [_prompt(n, n) for n in (3, 9, 1)]
    ids = [engine.add_request(p, 5) for p in prompts]
    outs = engine.run()
    assert [outs[i] for i in ids] == [_reference(model, p, 5) for p in prompts]


def test_admission_never_promises_more_blocks_than_the_pool_has():
    """Two identical requests whose worst cases (3 blocks each) together exceed the pool
    (5 blocks) by one: the second waits; admitting it would make both grow in lockstep to
    6 blocks and run the pool dry mid-decode."""
    model = _model()
    engine = Engine(
        model, num_blocks=5, block_size=4, config=SchedulerConfig(token_budget=16, max_running=4)
    )
    prompts = [_prompt(4, 1), _prompt(4, 2)]
    a, b = (engine.add_request(p, 9) for p in prompts)  # 4 + 9 - 1 = 12 positions: 3 blocks
    engine.step()
    assert engine.last_plan.admitted == [a] and engine.requests[b].status == "waiting"
    outs = engine.run()
    assert [outs[a], outs[b]] == [_reference(model, p, 9) for p in prompts]


def test_fast_engine_without_packing_computes_last_position_logits_only():
    """fast=True on a model it cannot pack: each prefill chunk (its own pass) still asks the
    output layer for its last position only."""
    model = _model()
    shapes: list[tuple[int, ...]] = []
    handle = model.lm_head.register_forward_hook(
        lambda _m, _a, out: shapes.append(tuple(out.shape[:2]))
    )
    try:
        engine = Engine(_Wrapped(model), 20, 4, SchedulerConfig(token_budget=5, max_running=1), fast=True)
        engine.add_request(_prompt(7, 1), 2)
        engine.run()
    finally:
        handle.remove()
    assert shapes == [(1, 1)] * 3  # chunks of 5 and 2 tokens, then one decode



def _three_or_five(score_of_5: float):
    """A logits edit (for ``_edit_logits``): every token scores -10 but token 3 (1.0) and
    token 5 (``score_of_5``), so a repetition penalty on token 5 decides between them."""

    def edit(out):
        out.fill_(-10.0)
        out[..., 3] = 1.0
        out[..., 5] = score_of_5

    return edit


@pytest.mark.parametrize("fast", [False, True])
def test_a_bfloat16_models_logits_are_processed_in_float32_like_generate(fast):
    """A bfloat16 model: its logits are processed (here a repetition penalty) in float32, as
    generate does. Token 5 (in the prompt) scores 1.3046875 and token 3 scores 1.0; after the
    penalty 1.3, token 5 scores 1.0036 in float32 and wins, while in bfloat16 it would round
    to 1.0, a tie that argmax gives to token 3."""
    model = DecoderLM(_model().config).eval()
    model.load_state_dict(_model().state_dict())
    model.to(torch.bfloat16)

    sampling = SamplingConfig(do_sample=False, repetition_penalty=1.3)
    prompt = [5, 7, 9]
    handle = _edit_logits(model, _three_or_five(1.3046875))  # exactly representable in bfloat16
    try:
        expected = _reference(model, prompt, 1, sampling=sampling)
        engine = Engine(model, num_blocks=4, block_size=4, fast=fast)
        a = engine.add_request(prompt, 1, sampling=sampling)
        assert engine.run()[a] == expected == [5]
    finally:
        handle.remove()


# ------------------------------------- from a mutation review (each kills a surviving mutant)


@pytest.mark.parametrize("fast", [False, True])
def test_greedy_with_repetition_penalty_applies_the_penalty(fast):
    """A greedy request with a repetition penalty (do_sample=False) is not plain greedy: the
    fast path must not choose it with the bare argmax. Token 5 (in the prompt) scores 1.3,
    token 3 scores 1.0; the penalty 1.5 brings token 5 to 0.87, so token 3 wins."""
    model = _model()

    sampling = SamplingConfig(do_sample=False, repetition_penalty=1.5)
    prompt = [5, 7, 9]
    handle = _edit_logits(model, _three_or_five(1.3))
    try:
        expected = _reference(model, prompt, 2, sampling=sampling)
        engine = Engine(model, num_blocks=4, block_size=4, fast=fast)
        other = engine.add_request([1, 2], 2)  # a plain greedy row in the same passes
        a = engine.add_request(prompt, 2, sampling=sampling)
        outs = engine.run()
        assert outs[a] == expected and expected[0] == 3
        assert outs[other] == _reference(model, [1, 2], 2)
    finally:
        handle.remove()


@pytest.mark.parametrize("fast", [False, True])
def test_events_come_in_request_order_when_a_sampled_row_precedes_a_greedy_one(fast):
    """step returns its events sorted by request id, also on the fast path, where plain
    greedy rows are chosen together before the sampled ones."""
    engine = Engine(_model(), num_blocks=20, block_size=4,
                    config=SchedulerConfig(token_budget=16), fast=fast)
    hot = SamplingConfig(temperature=1.3)
    a = engine.add_request(_prompt(3, 1), 4, sampling=hot, generator=torch.Generator().manual_seed(1))
    b = engine.add_request(_prompt(4, 2), 4)
    c = engine.add_request(_prompt(2, 3), 4, sampling=hot, generator=torch.Generator().manual_seed(2))
    d = engine.add_request(_prompt(5, 4), 4)
    for _ in range(3):
        events = engine.step()
        assert [e.request_id for e in events] == [a, b, c, d]


def test_without_chunking_a_prompt_exactly_the_size_of_the_budget_is_prefilled():
    """chunked_prefill=False: a prompt of exactly token_budget tokens (accepted by
    add_request) fits in an empty step; it must not wait forever."""
    model = _model()
    engine = Engine(model, num_blocks=8, block_size=4,
                    config=SchedulerConfig(token_budget=4, max_running=2, chunked_prefill=False))
    a = engine.add_request(_prompt(4, 1), 3)
    engine.step()
    assert engine.last_plan.prefill == [(a, 4)]
    b = engine.add_request(_prompt(3, 2), 2)  # 4 - 1 decode = 3 left: exactly b's prompt
    engine.step()
    assert (engine.last_plan.decode, engine.last_plan.prefill) == ([a], [(b, 3)])
    for _ in range(10):
        if not engine.has_work:
            break
        engine.step()
    assert engine.output(a) == _reference(model, _prompt(4, 1), 3)
    assert engine.output(b) == _reference(model, _prompt(3, 2), 2)


@pytest.mark.parametrize("fast", [False, True])
def test_an_undone_step_is_rerun_with_the_same_plan(fast):
    """After an undone step, several running requests are partly (here: not at all)
    prefilled at once; the retry gives the budget to their prompts in admission order
    (FCFS), i.e. it runs exactly the plan that failed."""
    model = _model()
    engine = Engine(
        model, num_blocks=24, block_size=4, config=SchedulerConfig(token_budget=12), fast=fast
    )
    a = engine.add_request(_prompt(5, 1), 6)
    engine.step()  # a prefilled
    b = engine.add_request(_prompt(4, 2), 4)
    c = engine.add_request(_prompt(9, 3), 4)
    handle = _fail_once(model, "layer", skip=0)
    try:
        with pytest.raises(RuntimeError, match="interrupted"):
            engine.step()
    finally:
        handle.remove()
    failed = (engine.last_plan.decode, engine.last_plan.prefill)
    assert failed == ([a], [(b, 4), (c, 7)])
    engine.step()
    assert (engine.last_plan.decode, engine.last_plan.prefill) == failed
    out = engine.run()
    assert out[b] == _reference(model, _prompt(4, 2), 4)
    assert out[c] == _reference(model, _prompt(9, 3), 4)
