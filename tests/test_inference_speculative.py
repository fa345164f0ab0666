"""Tests of inference/speculative.py: the acceptance rule reproduces the target's
distribution exactly (analytically and by Monte Carlo), greedy speculative decoding is the
target's greedy decoding, and the KV caches after a rejection equal a fresh prefill."""

from __future__ import annotations

import copy
import doctest

import pytest
import torch

from llmfoundations.generate import generate
from llmfoundations.inference import speculative
from llmfoundations.inference.speculative import (
    PromptLookupDraft,
    accept_probability,
    expected_acceptance,
    expected_tokens_per_round,
    residual_distribution,
    speculative_generate,
    speculative_sample_step,
    speculative_step_distribution,
)
from llmfoundations.kv_cache import KVCache
from llmfoundations.models import DecoderLM, ModelConfig
from llmfoundations.sampling import SamplingConfig

V = 37
SIZE = dict(d_model=32, n_layers=2, n_heads=4, init_std=0.2)


def _target(seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    model = DecoderLM(ModelConfig.llama(V, n_kv_heads=2, **SIZE)).eval()
    with torch.no_grad():  # non-trivial norm scales: logits differ clearly between tokens
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _noisy_copy(model: DecoderLM, scale: float, seed: int) -> DecoderLM:
    """A draft that agrees with the target often but not always."""
    torch.manual_seed(seed)
    draft = copy.deepcopy(model)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(scale * p.std() * torch.randn_like(p))
    return draft


def _other(seed: int) -> DecoderLM:
    """An unrelated draft with another architecture (learned positions, one layer)."""
    torch.manual_seed(seed)
    return DecoderLM(ModelConfig.gpt(V, d_model=16, n_layers=1, n_heads=2, max_seq_len=64)).eval()


def _pq(seed: int, n: int = 5, v: int = 8, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(n, v, generator=g, dtype=dtype) * 1.5, -1)
    q = torch.softmax(torch.randn(n, v, generator=g, dtype=dtype) * 1.5, -1)
    q[0, :3] = 0  # the draft filtered some tokens the target allows (top-k on q)
    p[1, 5:] = 0  # the target filtered some tokens the draft proposes
    q[3] = p[3]  # a draft that is exactly right
    return p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)


def test_doctests():
    assert doctest.testmod(speculative).failed == 0


# ----------------------------------------------------------------------------- the rule, exactly


def _paths_by_hand(p: list[float], q: list[float]) -> list[float]:
    """The output distribution of one step, summed over the paths in plain Python."""
    v = len(p)
    excess = [max(0.0, p[i] - q[i]) for i in range(v)]
    total = sum(excess)
    residual = [e / total for e in excess] if total > 0 else p
    out = [0.0] * v
    for x in range(v):  # the draft proposes x with probability q(x)
        if q[x] == 0:
            continue
        a = min(1.0, p[x] / q[x])
        out[x] += q[x] * a  # accepted
        for y in range(v):
            out[y] += q[x] * (1 - a) * residual[y]  # rejected, replaced from the residual
    return out


def test_output_distribution_is_the_target_distribution():
    for seed in range(4):
        p, q = _pq(seed)
        exact = speculative_step_distribution(p, q)
        torch.testing.assert_close(exact, p, rtol=0, atol=1e-12)
        for row in range(p.shape[0]):
            by_hand = _paths_by_hand(p[row].tolist(), q[row].tolist())
            assert max(abs(a - b) for a, b in zip(by_hand, p[row].tolist(), strict=True)) < 1e-12
        p32, q32 = p.float(), q.float()
        torch.testing.assert_close(speculative_step_distribution(p32, q32), p32, rtol=0, atol=1e-6)


def test_rule_pieces_closed_forms():
    p = torch.tensor([[0.2, 0.3, 0.5], [0.5, 0.5, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.4, 0.4, 0.2], [0.5, 0.5, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(
        accept_probability(p, q, torch.tensor([0, 1])), torch.tensor([0.5, 1.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        accept_probability(p, q, torch.tensor([2, 0])), torch.tensor([1.0, 1.0], dtype=torch.float64)
    )
    r = residual_distribution(p, q)
    torch.testing.assert_close(r[0], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(r[1], p[1])  # p == q: nothing to correct, falls back to p
    torch.testing.assert_close(expected_acceptance(p, q), torch.tensor([0.7, 1.0], dtype=torch.float64))
    assert expected_tokens_per_round(0.0, 4) == 1.0
    assert expected_tokens_per_round(1.0, 4) == 5.0
    assert expected_tokens_per_round(0.5, 2) == pytest.approx(1.75)


def test_monte_carlo_matches_the_target_and_the_acceptance_formula():
    # 200k independent single steps on a vocabulary of 8 (a fixed seed).
    p, q = _pq(11)
    p, q = p[:1].float(), q[:1].float()  # a row where q leaves out tokens that p allows
    n = 200_000
    g = torch.Generator().manual_seed(0)
    drafts = torch.multinomial(q.expand(n, -1), 1, replacement=True, generator=g).squeeze(-1)
    tokens, accepted = speculative_sample_step(p.expand(n, -1), q.expand(n, -1), drafts, g)
    freq = torch.bincount(tokens, minlength=p.shape[1]).double() / n
    tv = 0.5 * (freq - p[0].double()).abs().sum().item()
    assert tv < 0.01
    expected = p[0].double() * n  # a chi-square-ish statistic, df = 7: 99.99% quantile ~ 29.9
    observed = torch.bincount(tokens, minlength=p.shape[1]).double()
    chi2 = ((observed - expected) ** 2 / expected.clamp_min(1e-9))[expected > 0].sum().item()
    assert chi2 < 30
    alpha = expected_acceptance(p, q).item()
    assert abs(accepted.double().mean().item() - alpha) < 0.005
    # The test can fail: the draft's tokens alone are far from p.
    draft_freq = torch.bincount(drafts, minlength=p.shape[1]).double() / n
    assert 0.5 * (draft_freq - p[0].double()).abs().sum().item() > 0.1


def test_processing_both_distributions_keeps_exactness():
    # Temperature and top-k applied to target and draft logits alike: the output follows
    # the *processed* target distribution (it would not if q were the raw draft softmax).
    g = torch.Generator().manual_seed(3)
    zt, zd = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    cfg = SamplingConfig(temperature=0.7, top_k=4)
    p = torch.softmax(cfg.process(zt), -1)
    q = torch.softmax(cfg.process(zd), -1)
    torch.testing.assert_close(speculative_step_distribution(p, q), p, rtol=0, atol=1e-6)
    q_raw = torch.softmax(zd, -1)  # what a buggy loop would pass after sampling from q
    assert (speculative_step_distribution(p, q_raw) - p).abs().max() < 1e-6  # still p ...
    # ... but only if the draft token really came from q_raw: the rule is exact for the q
    # that was sampled, and top-k means it was sampled from q, not q_raw.
    n = 100_000
    drafts = torch.multinomial(q[0:1].expand(n, -1), 1, replacement=True, generator=g).squeeze(-1)
    good, _ = speculative_sample_step(p[0:1].expand(n, -1), q[0:1].expand(n, -1), drafts, g)
    bad, _ = speculative_sample_step(p[0:1].expand(n, -1), q_raw[0:1].expand(n, -1), drafts, g)
    tv = lambda t: 0.5 * (torch.bincount(t, minlength=10) / n - p[0]).abs().sum().item()  # noqa: E731
    assert tv(good) < 0.01
    assert tv(bad) > 0.05


# ----------------------------------------------------------------------------- generation, greedy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_speculative_equals_greedy_generate_of_the_target(seed):
    target = _target(seed)
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, V, (1, 5), generator=g)
    want = generate(target, prompt, 24)
    drafts = {"noisy copy": _noisy_copy(target, 0.05, seed), "other model": _other(seed)}
    for name, draft in drafts.items():
        for gamma in (1, 3, 5):
            out = speculative_generate(target, draft, prompt, 24, gamma)
            assert torch.equal(out.sequences, want), (name, gamma)
            assert out.num_new_tokens == 24
            assert sum(out.accepted_per_round) == out.num_accepted
            assert out.num_target_forwards == len(out.accepted_per_round)
            assert out.num_new_tokens == out.num_accepted + out.num_target_forwards
    # a noisy copy agrees more often than an unrelated model, and saves target passes
    close = speculative_generate(target, drafts["noisy copy"], prompt, 24, 3)
    far = speculative_generate(target, drafts["other model"], prompt, 24, 3)
    assert close.acceptance_rate > far.acceptance_rate


@pytest.mark.parametrize("gamma", [1, 2, 4])
def test_the_target_as_its_own_draft_accepts_everything(gamma):
    target = _target(4)
    prompt = [3, 1, 4, 1, 5]
    out = speculative_generate(target, target, prompt, 20, gamma)
    assert torch.equal(out.sequences, generate(target, [prompt], 20))
    assert out.acceptance_rate == 1.0
    assert out.num_target_forwards == -(-20 // (gamma + 1))  # ceil(20 / (γ + 1))
    assert out.tokens_per_target_forward == 20 / out.num_target_forwards


def test_greedy_stops_like_generate_and_handles_tiny_budgets():
    target = _target(5)
    draft = _noisy_copy(target, 0.1, 5)
    prompt = [2, 7, 1, 8]
    free = generate(target, [prompt], 16)[0, 4:].tolist()
    stop = free[6]  # a token the target will produce
    out = speculative_generate(target, draft, prompt, 16, 3, stop_token_ids=stop)
    want = free[: free.index(stop) + 1]
    assert out.new_tokens[0].tolist() == want and out.stopped
    one = speculative_generate(target, draft, prompt, 1, 3)  # no room to draft
    assert one.new_tokens[0].tolist() == free[:1] and one.num_proposed == 0
    assert one.num_target_forwards == 1 and one.acceptance_rate == 0.0
    none = speculative_generate(target, draft, prompt, 0, 3)
    assert none.num_new_tokens == 0 and none.tokens_per_target_forward == 0.0
    single = speculative_generate(target, draft, [prompt[0]], 10, 3)  # a one-token prompt
    assert torch.equal(single.sequences, generate(target, [[prompt[0]]], 10))


def _spy(model: DecoderLM, log: list) -> None:
    """Record every cached forward pass: (cache length before, fed ids, logits)."""
    inner = model.forward_unchecked

    def spy(ids, *, kv_cache=None, **kwargs):
        before = kv_cache.length
        out = inner(ids, kv_cache=kv_cache, **kwargs)
        log.append((before, ids.clone(), out.logits.clone()))
        return out

    model.forward_unchecked = spy


@pytest.mark.parametrize("do_sample", [False, True])
def test_caches_after_rejections_equal_a_fresh_prefill(do_sample):
    target = _target(6)
    draft = _noisy_copy(target, 0.1, 6)
    t_log, d_log = [], []
    _spy(target, t_log)
    _spy(draft, d_log)
    sampling = SamplingConfig(temperature=1.0) if do_sample else None
    g = torch.Generator().manual_seed(0)
    out = speculative_generate(target, draft, [5, 9, 2], 30, 4, sampling, generator=g)
    del target.forward_unchecked, draft.forward_unchecked
    assert 0 < out.acceptance_rate < 1  # there were rejections to roll back
    final = out.sequences
    # The target's cache holds only committed tokens: a pass that reads a cache of length
    # c gives the logits of a cache-free pass over final[:c] + the fed tokens.
    assert any(c > 0 for c, _, _ in t_log)
    for c, fed, logits in t_log:
        with torch.no_grad():
            fresh = target(torch.cat([final[:, :c], fed], dim=1)).logits[:, c:]
        torch.testing.assert_close(logits, fresh, rtol=1e-4, atol=1e-4)
    # The draft's cache also holds the round's drafts. Follow what it holds (`mirror`):
    # every pass equals a fresh pass over mirror[:c] + fed, and after a roll-back (c shorter
    # than what was fed before) what is left is the committed prefix.
    mirror = torch.zeros(1, 0, dtype=torch.long)
    rollbacks = 0
    for c, fed, logits in d_log:
        if c < mirror.shape[1]:
            rollbacks += 1
            assert torch.equal(mirror[:, :c], final[:, :c])
        mirror = torch.cat([mirror[:, :c], fed], dim=1)
        with torch.no_grad():
            fresh = draft(mirror).logits[:, c:]
        torch.testing.assert_close(logits, fresh, rtol=1e-4, atol=1e-4)
    assert rollbacks > 0


def test_kv_cache_crop_then_continue_equals_fresh_prefill():
    target = _target(7)
    ids = torch.tensor([[4, 8, 15, 16, 23, 42 % V, 7, 9]])
    with torch.no_grad():
        cache = KVCache.for_model(target, 1, 16)
        target(ids, kv_cache=cache)  # 5 committed + 3 drafts
        cache.crop(6)  # 1 draft accepted, 2 rejected
        cont = target(torch.tensor([[11]]), kv_cache=cache).logits  # the replacement token
        fresh = target(torch.cat([ids[:, :6], torch.tensor([[11]])], dim=1)).logits[:, -1:]
    torch.testing.assert_close(cont, fresh, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- generation, sampling


@pytest.mark.slow
def test_sampled_generation_follows_the_processed_target_distribution():
    # Two new tokens, γ = 1: the joint distribution of (token 1, token 2) over 3000 runs
    # vs the exact processed target distribution computed from the target alone.
    vocab = 6
    torch.manual_seed(0)
    target = DecoderLM(ModelConfig.llama(vocab, **SIZE)).eval()
    torch.manual_seed(1)
    draft = DecoderLM(ModelConfig.llama(vocab, d_model=16, n_layers=1, n_heads=2)).eval()
    cfg = SamplingConfig(temperature=1.3, top_k=4)
    prompt = [1, 2]
    with torch.no_grad():
        p1 = torch.softmax(cfg.process(target(torch.tensor([prompt])).logits[:, -1]), -1)[0]
        seconds = torch.tensor([prompt + [t] for t in range(vocab)])
        p2 = torch.softmax(cfg.process(target(seconds).logits[:, -1]), -1)  # (V, V)
        q1 = torch.softmax(cfg.process(draft(torch.tensor([prompt])).logits[:, -1]), -1)[0]
    joint = (p1[:, None] * p2).reshape(-1)  # (V * V,)
    g = torch.Generator().manual_seed(0)
    n = 3000
    counts = torch.zeros(vocab * vocab)
    for _ in range(n):
        out = speculative_generate(target, draft, prompt, 2, 1, cfg, generator=g)
        a, b = out.new_tokens[0].tolist()
        counts[a * vocab + b] += 1
    tv = 0.5 * (counts / n - joint).abs().sum().item()
    assert tv < 0.06
    assert 0.5 * (q1 - p1).abs().sum().item() > 0.15  # the draft alone is clearly different


def test_sampling_is_reproducible_and_acceptance_tracks_the_draft():
    target = _target(8)
    cfg = SamplingConfig(temperature=0.8, top_p=0.9)
    runs = [
        speculative_generate(
            target, _noisy_copy(target, 0.1, 8), [1, 2, 3], 20, 3, cfg,
            generator=torch.Generator().manual_seed(5),
        )
        for _ in range(2)
    ]
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    same = speculative_generate(
        target, target, [1, 2, 3], 20, 3, cfg, generator=torch.Generator().manual_seed(5)
    )
    assert same.acceptance_rate > 0.95  # p == q up to rounding: (almost) always accepted


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs_are_refused():
    target = _target(9)
    with pytest.raises(ValueError, match="share one vocabulary"):
        speculative_generate(target, DecoderLM(ModelConfig.llama(V + 1, **SIZE)), [1], 4)
    with pytest.raises(ValueError, match="num_draft_tokens must be >= 1"):
        speculative_generate(target, target, [1], 4, 0)
    with pytest.raises(ValueError, match="batch size 1"):
        speculative_generate(target, target, torch.tensor([[1, 2], [3, 4]]), 4)
    with pytest.raises(ValueError, match="repetition_penalty"):
        speculative_generate(target, target, [1], 4, sampling=SamplingConfig(repetition_penalty=1.2))
    with pytest.raises(TypeError, match="draft must"):
        speculative_generate(target, torch.nn.Linear(2, 2), [1], 4)
    with pytest.raises(TypeError, match="sampling"):
        speculative_generate(target, target, [1], 4, sampling="greedy")
    with pytest.raises(ValueError, match="at least one token"):
        speculative_generate(target, target, [], 4)
    with pytest.raises(ValueError, match="vocab_size"):
        speculative_generate(target, target, [V], 4)
    with pytest.raises(ValueError, match="max_seq_len"):
        speculative_generate(target, target, [1], 400)
    with pytest.raises(ValueError, match="stop_token_ids"):
        speculative_generate(target, target, [1], 4, stop_token_ids=[V])
    p, q = _pq(0)
    with pytest.raises(ValueError, match="probabilities"):
        speculative_step_distribution(torch.log(p + 1e-9), q)
    with pytest.raises(ValueError, match="same shape"):
        speculative_step_distribution(p, q[:2])
    with pytest.raises(ValueError, match="q > 0"):
        speculative_sample_step(p, q, torch.tensor([0, 0, 0, 0, 0]))  # q[0, 0] == 0
    with pytest.raises(ValueError, match="N=5"):
        accept_probability(p, q, torch.tensor([1]))
    with pytest.raises(ValueError, match="alpha"):
        expected_tokens_per_round(1.5, 3)


# ----------------------------------------------------------------------------- prompt lookup


def _propose_by_hand(context: list[int], k: int, max_n: int, min_n: int, last: bool) -> list[int]:
    """The lookup in plain Python: longest suffix n-gram first, an earlier occurrence that
    is followed by at least one token, its continuation."""
    for n in range(min(max_n, len(context) - 1), min_n - 1, -1):
        suffix = context[len(context) - n :]
        starts = [s for s in range(len(context) - n) if context[s : s + n] == suffix]
        if starts:
            s = (starts[-1] if last else starts[0]) + n
            return context[s : s + k]
    return []


def test_prompt_lookup_proposals_by_hand():
    d = PromptLookupDraft(max_ngram_size=3)
    ctx = [7, 1, 2, 3, 9, 9, 4, 1, 2, 3, 5, 6, 0, 2, 3]
    assert d.propose(ctx, 4) == [5, 6, 0, 2]  # "2 3" matched twice; trigram "0 2 3" never
    assert PromptLookupDraft(3, match="first").propose(ctx, 4) == [9, 9, 4, 1]
    assert PromptLookupDraft(3, min_ngram_size=3).propose(ctx, 4) == []  # only trigrams
    assert d.propose(ctx, 0) == []
    assert d.propose([4], 3) == []  # nothing before the suffix
    assert d.propose([1, 2, 1, 2], 5) == [1, 2]  # the continuation stops at the context's end
    assert d.propose(torch.tensor([3, 8, 3]), 2) == [8, 3]  # a tensor works too
    g = torch.Generator().manual_seed(0)
    for trial in range(300):  # random contexts over a small vocabulary: many matches
        ctx = torch.randint(0, 4, (int(torch.randint(1, 25, (1,), generator=g)),), generator=g).tolist()
        max_n, k = 1 + trial % 4, trial % 6
        min_n = 1 + (trial // 4) % max_n
        for match in ("last", "first"):
            got = PromptLookupDraft(max_n, min_n, match).propose(ctx, k)
            assert got == _propose_by_hand(ctx, k, max_n, min_n, match == "last"), (ctx, k, max_n, min_n)


def test_one_hot_draft_keeps_the_distribution_exact():
    # A deterministic proposal is a draft with q = e_x: accept with probability p(x),
    # otherwise draw from p without x. Both paths together give p, for any x.
    p, _ = _pq(4)
    for x in range(p.shape[1]):
        q = torch.zeros_like(p)
        q[:, x] = 1.0
        torch.testing.assert_close(speculative_step_distribution(p, q), p, rtol=0, atol=1e-12)
        torch.testing.assert_close(accept_probability(p, q, torch.full((p.shape[0],), x)), p[:, x])
        rest = p.clone()
        rest[:, x] = 0
        expected = torch.where(rest.sum(-1, keepdim=True) > 0, rest / rest.sum(-1, keepdim=True), p)
        torch.testing.assert_close(residual_distribution(p, q), expected, rtol=0, atol=1e-12)
    # Monte Carlo: 200k single steps with the draft always proposing token 2.
    g = torch.Generator().manual_seed(1)
    row = p[2:3].expand(200_000, -1).float()
    q = torch.zeros_like(row)
    q[:, 2] = 1.0
    tokens, accepted = speculative_sample_step(row, q, torch.full((row.shape[0],), 2), g)
    freq = torch.bincount(tokens, minlength=p.shape[1]).double() / row.shape[0]
    assert 0.5 * (freq - p[2]).abs().sum().item() < 0.01
    assert abs(accepted.double().mean().item() - p[2, 2].item()) < 0.01


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_greedy_prompt_lookup_equals_greedy_generate_and_saves_target_passes(seed):
    # A random tiny model soon repeats itself under greedy decoding: repetitive text,
    # which the lookup copies from the context (prompt and generated tokens alike).
    target = _target(seed)
    prompt = [1, 2, 3, 4, 5, 1, 2, 3]
    expected = generate(target, torch.tensor([prompt]), 60)
    for drafter, most in ((PromptLookupDraft(), 50), (PromptLookupDraft(2, match="first"), 59)):
        out = speculative_generate(target, drafter, prompt, 60, 4)
        assert torch.equal(out.sequences, expected)
        assert out.num_draft_forwards == 0
        assert out.num_new_tokens == sum(n + 1 for n in out.accepted_per_round)
        assert out.num_target_forwards == len(out.accepted_per_round)
        assert out.num_target_forwards <= most  # fewer target passes than the 60 tokens


def test_prompt_lookup_proposes_nothing_without_a_match_and_stops_like_generate():
    target = _target(5)
    out = speculative_generate(target, PromptLookupDraft(), [1], 1, 4)  # one-token prompt
    assert (out.num_proposed, out.num_target_forwards) == (0, 1)
    expected = generate(target, torch.tensor([[1, 2, 1, 2]]), 30)
    stop = expected[0, 4 + 7].item()
    want = generate(target, torch.tensor([[1, 2, 1, 2]]), 30, stop_token_ids=stop)
    got = speculative_generate(target, PromptLookupDraft(), [1, 2, 1, 2], 30, 3, stop_token_ids=stop)
    assert got.stopped and torch.equal(got.sequences, want[:, : got.sequences.shape[1]])
    assert got.new_tokens[0, -1].item() == stop


@pytest.mark.slow
def test_sampled_generation_with_prompt_lookup_follows_the_target_distribution():
    # As the test above for a model draft: two new tokens, the joint distribution over
    # 3000 runs vs the exact processed target distribution. The prompt repeats, so the
    # lookup proposes at both steps.
    vocab = 6
    torch.manual_seed(0)
    target = DecoderLM(ModelConfig.llama(vocab, **SIZE)).eval()
    cfg = SamplingConfig(temperature=1.3, top_k=4)
    prompt = [1, 2, 3, 1, 2]
    with torch.no_grad():
        p1 = torch.softmax(cfg.process(target(torch.tensor([prompt])).logits[:, -1]), -1)[0]
        seconds = torch.tensor([prompt + [t] for t in range(vocab)])
        p2 = torch.softmax(cfg.process(target(seconds).logits[:, -1]), -1)  # (V, V)
    joint = (p1[:, None] * p2).reshape(-1)  # (V * V,)
    g = torch.Generator().manual_seed(0)
    n, proposed = 3000, 0
    counts = torch.zeros(vocab * vocab)
    for _ in range(n):
        out = speculative_generate(target, PromptLookupDraft(), prompt, 2, 1, cfg, generator=g)
        a, b = out.new_tokens[0].tolist()
        counts[a * vocab + b] += 1
        proposed += out.num_proposed
    tv = 0.5 * (counts / n - joint).abs().sum().item()
    assert tv < 0.06
    assert proposed >= n  # "1 2" -> 3 is proposed first, every time
    assert 0.5 * (1 - p1[3]).item() > 0.15  # the proposal alone (always 3) is clearly not p


def test_prompt_lookup_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="max_ngram_size must be >= 1"):
        PromptLookupDraft(0)
    with pytest.raises(ValueError, match="min_ngram_size must be >= 1"):
        PromptLookupDraft(2, 0)
    with pytest.raises(ValueError, match="min_ngram_size must be <= max_ngram_size"):
        PromptLookupDraft(2, 3)
    with pytest.raises(TypeError, match="max_ngram_size must be an int"):
        PromptLookupDraft(2.0)
    with pytest.raises(ValueError, match="match must be"):
        PromptLookupDraft(match="longest")
    with pytest.raises(ValueError, match="num_tokens must be >= 0"):
        PromptLookupDraft().propose([1, 2], -1)
    with pytest.raises(ValueError, match="num_draft_tokens must be >= 1"):
        speculative_generate(_target(9), PromptLookupDraft(), [1], 4, 0)


@pytest.mark.slow
@pytest.mark.model
def test_smollm2_greedy_prompt_lookup_equals_greedy_generate(smollm2_path, tmp_path_factory):
    from llmfoundations import pretrained

    model, tok = pretrained.load_smollm2(path=smollm2_path)  # float32
    text = "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n"
    chat = [{"role": "user", "content": f"Rename the functions to plus and minus:\n{text}"}]
    prompt = tok.encode(pretrained.apply_chat_template(chat, add_generation_prompt=True))
    expected = generate(model, torch.tensor([prompt]), 40)
    out = speculative_generate(model, PromptLookupDraft(), prompt, 40, 4)
    assert torch.equal(out.sequences, expected)
    assert out.tokens_per_target_forward > 1.5  # it copies the code
