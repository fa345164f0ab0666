"""Tests of llmfoundations.sampling.

References: transformers' logits processors (keep-sets and kept values must be equal,
bit for bit), transformers' beam search on a tiny random GPT-2, exhaustive search over
every sequence of a small step function, and exact counting statistics for sampling.
"""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llmfoundations.sampling import (
    BestOfN,
    Hypothesis,
    SamplingConfig,
    apply_temperature,
    beam_search,
    best_of_n,
    distinct_n,
    greedy,
    min_p_filter,
    repetition_penalty,
    sample,
    sequence_logprob,
    top_k_filter,
    top_p_filter,
)
from llmfoundations.sampling import repetition_rate as repetition_rate_fn

INF = float("inf")
NO_IDS = torch.zeros(1, 0, dtype=torch.long)  # transformers wants input_ids; warpers ignore them

# --------------------------------------------------------------------------- strategies

EXTREMES = torch.tensor([-1e30, 1e30, -1e4, 1e4, -INF], dtype=torch.float64)


@st.composite
def logits_batches(draw, max_vocab: int = 40) -> torch.Tensor:
    """(B, V) float32 or float64 logits mixing small integers (ties), ordinary floats,
    extremes (+-1e30, +-1e4) and -inf (tokens already removed); every row keeps at least
    one finite value. Hypothesis draws the sizes, the mix and a seed; torch fills the
    tensor (much faster than drawing every entry through hypothesis)."""
    batch = draw(st.integers(1, 3))
    vocab = draw(st.integers(1, max_vocab))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    share_ties, share_extreme, share_removed = (
        draw(st.sampled_from(shares))
        for shares in ([0.0, 0.5, 1.0], [0.0, 0.1, 0.3], [0.0, 0.2, 0.5])
    )
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    u = torch.rand(batch, vocab, generator=g, dtype=torch.float64)
    x = torch.randn(batch, vocab, generator=g, dtype=torch.float64) * 10
    ints = torch.randint(-3, 4, (batch, vocab), generator=g).double()
    extremes = EXTREMES[torch.randint(0, 4, (batch, vocab), generator=g)]
    x = torch.where(u < share_ties, ints, x)
    x = torch.where(torch.rand(batch, vocab, generator=g) < share_extreme, extremes, x)
    x = x.masked_fill(torch.rand(batch, vocab, generator=g) < share_removed, -INF)
    dead = ~torch.isfinite(x).any(dim=-1)
    x[dead, 0] = 0.0
    return x.to(dtype)


def assert_same_logits(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Same removed set (-inf), and the kept logits equal exactly."""
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert torch.equal(torch.isneginf(ours), torch.isneginf(theirs)), (ours, theirs)
    kept = ~torch.isneginf(ours)
    torch.testing.assert_close(ours[kept], theirs[kept], atol=0, rtol=0)


def kept(x: torch.Tensor) -> torch.Tensor:
    return ~torch.isneginf(x)


# --------------------------------------------------------------------------- against transformers


@settings(max_examples=60, deadline=None)
@given(x=logits_batches(), temperature=st.floats(0.05, 5.0))
def test_temperature_matches_transformers(x, temperature):
    before = x.clone()
    assert_same_logits(
        apply_temperature(x, temperature), TemperatureLogitsWarper(temperature)(NO_IDS, x)
    )
    assert torch.equal(x, before)  # the input is never modified


@settings(max_examples=100, deadline=None)
@given(x=logits_batches(), k=st.integers(1, 45))
def test_top_k_matches_transformers(x, k):
    before = x.clone()
    assert_same_logits(top_k_filter(x, k), TopKLogitsWarper(k)(NO_IDS, x.clone()))
    assert torch.equal(x, before)


@settings(max_examples=150, deadline=None)
@given(
    x=logits_batches(),
    p=st.one_of(
        st.floats(0.0, 1.0, exclude_min=True), st.sampled_from([0.25, 0.5, 0.75, 0.9, 1.0])
    ),
    min_keep=st.integers(1, 3),
)
def test_top_p_matches_transformers(x, p, min_keep):
    before = x.clone()
    theirs = TopPLogitsWarper(p, min_tokens_to_keep=min_keep)(NO_IDS, x.clone())
    assert_same_logits(top_p_filter(x, p, min_tokens_to_keep=min_keep), theirs)
    assert torch.equal(x, before)


@settings(max_examples=100, deadline=None)
@given(
    x=logits_batches(),
    p=st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.05, 0.5, 1.0])),
    min_keep=st.integers(1, 3),
)
def test_min_p_matches_transformers(x, p, min_keep):
    before = x.clone()
    theirs = MinPLogitsWarper(p, min_tokens_to_keep=min_keep)(NO_IDS, x.clone())
    assert_same_logits(min_p_filter(x, p, min_tokens_to_keep=min_keep), theirs)
    assert torch.equal(x, before)


@settings(max_examples=60, deadline=None)
@given(
    x=logits_batches(),
    penalty=st.floats(0.1, 5.0),
    length=st.integers(1, 12),
    seed=st.integers(0, 999),
)
def test_repetition_penalty_matches_transformers(x, penalty, length, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, x.shape[1], (x.shape[0], length), generator=g)
    before = x.clone()
    theirs = RepetitionPenaltyLogitsProcessor(penalty)(ids, x.clone())
    assert_same_logits(repetition_penalty(x, ids, penalty), theirs)
    assert torch.equal(x, before)


@settings(max_examples=50, deadline=None)
@given(
    x=logits_batches(),
    temperature=st.floats(0.3, 3.0),
    top_k=st.integers(1, 45),
    top_p=st.floats(0.05, 1.0),
    min_p=st.floats(0.0, 0.5),
    penalty=st.floats(0.5, 2.0),
    seed=st.integers(0, 999),
)
def test_config_process_matches_processor_list(x, temperature, top_k, top_p, min_p, penalty, seed):
    """The whole chain, in transformers' order, equals transformers' list of processors."""
    x = x.clamp(min=-1e4, max=1e4)  # keep temperature from overflowing to +inf
    ids = torch.randint(
        0, x.shape[1], (x.shape[0], 5), generator=torch.Generator().manual_seed(seed)
    )
    config = SamplingConfig(temperature, top_k, top_p, min_p, repetition_penalty=penalty)
    processors = LogitsProcessorList(
        [
            RepetitionPenaltyLogitsProcessor(penalty),
            TemperatureLogitsWarper(temperature),
            TopKLogitsWarper(top_k),
            TopPLogitsWarper(top_p),
            MinPLogitsWarper(min_p),
        ]
    )
    assert_same_logits(config.process(x, ids), processors(ids, x.clone()))


# --------------------------------------------------------------------------- hand-made cases


def test_top_k_ties_keep_more_than_k():
    x = torch.tensor([[3.0, 2.0, 2.0, 1.0, 2.0]])
    ours = top_k_filter(x, 2)
    assert kept(ours).tolist() == [[True, True, True, False, True]]
    assert_same_logits(ours, TopKLogitsWarper(2)(NO_IDS, x.clone()))
    assert kept(top_k_filter(x, 99)).all()  # k above the vocabulary keeps everything


@pytest.mark.parametrize("vocab", [4, 40])  # torch.sort orders ties differently above 16
def test_top_p_cuts_through_ties(vocab):
    """Equal logits, p = 0.5: exactly half the tokens survive, the same half as transformers."""
    x = torch.zeros(2, vocab)
    ours = top_p_filter(x, 0.5)
    assert kept(ours).sum(dim=-1).tolist() == [vocab // 2, vocab // 2]
    assert_same_logits(ours, TopPLogitsWarper(0.5)(NO_IDS, x.clone()))


def test_top_p_boundary_and_special_values():
    # probabilities 1/4, 1/4, 1/2: the tail 1/4 + 1/4 equals 1 - p, so it is dropped
    x = torch.tensor([[0.25, 0.25, 0.5]], dtype=torch.float64).log()
    assert kept(top_p_filter(x, 0.5)).tolist() == [[False, False, True]]
    # p = 1 still drops tokens whose probability underflows to exactly 0 (as transformers does)
    x = torch.tensor([[0.0, -200.0, 1.0]])
    assert kept(top_p_filter(x, 1.0)).tolist() == [[True, False, True]]
    assert_same_logits(top_p_filter(x, 1.0), TopPLogitsWarper(1.0)(NO_IDS, x.clone()))
    # extremes and tokens already removed
    x = torch.tensor([[1e30, -1e30, 0.0, -INF], [-INF, -INF, 5.0, -INF]])
    for p in (0.1, 0.9, 1.0):
        assert_same_logits(top_p_filter(x, p), TopPLogitsWarper(p)(NO_IDS, x.clone()))
        assert kept(top_p_filter(x, p)).tolist() == [
            [True, False, False, False],
            [False, False, True, False],
        ]


def test_min_p_worked_example():
    probs = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]], dtype=torch.float64)
    assert kept(min_p_filter(probs.log(), 0.3)).tolist() == [[True, True, True, False, False]]
    assert kept(min_p_filter(probs.log(), 0.0)).all()
    assert kept(min_p_filter(probs.log(), 1.0)).sum() == 1
    assert kept(min_p_filter(probs.log(), 1.0, min_tokens_to_keep=3)).sum() == 3


def test_repetition_penalty_hand_example():
    x = torch.tensor([[2.0, -2.0, 0.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
    ids = torch.tensor([[0, 1, 1, 2], [3, 3, 3, 3]])  # repeats are penalised once
    expected = torch.tensor([[1.0, -4.0, 0.0, 4.0], [1.0, 1.0, 1.0, 0.5]])
    torch.testing.assert_close(repetition_penalty(x, ids, 2.0), expected, atol=0, rtol=0)
    torch.testing.assert_close(repetition_penalty(x, ids, 1.0), x, atol=0, rtol=0)
    empty = torch.zeros(2, 0, dtype=torch.long)
    torch.testing.assert_close(repetition_penalty(x, empty, 2.0), x, atol=0, rtol=0)


def test_half_precision_probabilities_in_float32():
    torch.manual_seed(0)
    x = torch.randn(3, 16).bfloat16()
    for fn in (lambda t: top_p_filter(t, 0.7), lambda t: min_p_filter(t, 0.2)):
        out = fn(x)
        assert out.dtype == torch.bfloat16
        assert torch.equal(kept(out), kept(fn(x.float())))


# --------------------------------------------------------------------------- properties


@settings(max_examples=100, deadline=None)
@given(x=logits_batches(), p=st.floats(0.0, 1.0, exclude_min=True))
def test_top_p_keeps_the_smallest_sufficient_set(x, p):
    """Kept mass >= p; dropping the least likely kept token would fall below p; the kept
    tokens are the most likely ones."""
    x = x.double()
    probs = x.softmax(dim=-1)
    keep = kept(top_p_filter(x, p))
    eps = 1e-9
    for row in range(x.shape[0]):
        kept_probs, dropped_probs = probs[row][keep[row]], probs[row][~keep[row]]
        assert kept_probs.sum() >= p - eps
        if kept_probs.numel() > 1:
            assert kept_probs.sum() - kept_probs.min() < p + eps
        if dropped_probs.numel():
            assert kept_probs.min() >= dropped_probs.max()


@settings(max_examples=80, deadline=None)
@given(x=logits_batches(), k=st.integers(1, 45), p=st.floats(0.0, 1.0, exclude_min=True))
def test_filters_never_empty_and_keep_the_best(x, k, p):
    for out in (
        top_k_filter(x, k),
        top_p_filter(x, p),
        min_p_filter(x, p),
        apply_temperature(x, 0),
    ):
        keep = kept(out)
        # the largest logit survives (with ties, top-p may keep another copy than the argmax)
        assert torch.equal(out.amax(dim=-1), x.amax(dim=-1))
        torch.testing.assert_close(out[keep], x[keep], atol=0, rtol=0)  # kept values untouched
    keep = kept(top_k_filter(x, k))
    n_finite = torch.isfinite(x).sum(dim=-1)
    assert (keep.sum(dim=-1) >= n_finite.clamp(max=k)).all()
    lowest_kept = x.masked_fill(~keep, INF).amin(dim=-1)
    highest_dropped = x.masked_fill(keep, -INF).amax(dim=-1)
    assert (lowest_kept > highest_dropped).all()


# --------------------------------------------------------------------------- choosing tokens


@settings(max_examples=50, deadline=None)
@given(x=logits_batches())
def test_greedy_is_argmax_and_temperature_zero_is_greedy(x):
    assert torch.equal(greedy(x), x.argmax(dim=-1))
    assert greedy(x).dtype == torch.long
    assert torch.equal(sample(x, temperature=0), greedy(x))
    assert torch.equal(greedy(apply_temperature(x, 0)), greedy(x))
    assert (kept(apply_temperature(x, 0)).sum(dim=-1) == 1).all()


def test_ties_go_to_the_first_index():
    x = torch.tensor([[1.0, 3.0, 3.0]])
    assert greedy(x).tolist() == [1]
    assert kept(apply_temperature(x, 0)).tolist() == [[False, True, False]]


def test_do_sample_false_is_greedy_after_the_penalty():
    x = torch.tensor([[3.0, 2.5, 0.0]])
    ids = torch.tensor([[0]])
    config = SamplingConfig(temperature=5.0, top_k=3, repetition_penalty=2.0, do_sample=False)
    assert config.is_greedy
    assert config.choose(x, ids).tolist() == [1]  # 3.0 / 2 < 2.5
    assert torch.equal(config.process(x, ids), repetition_penalty(x, ids, 2.0))


def test_seeded_sampling_is_deterministic():
    logits = torch.zeros(500, 10)
    draws = [
        sample(logits, top_p=0.9, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)
    ]
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])
    config = SamplingConfig(temperature=0.7, min_p=0.1)
    a = config.choose(logits, generator=torch.Generator().manual_seed(3))
    b = config.choose(logits, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.long and a.shape == (500,)


def chi2_quantile(q: float, df: int) -> float:
    """Quantile of the chi-square distribution: bisection on its CDF,
    P(df / 2, x / 2) (the regularised lower incomplete gamma function)."""
    low, high = 0.0, 10.0 * df + 100.0
    for _ in range(200):
        mid = (low + high) / 2
        cdf = torch.special.gammainc(
            torch.tensor(df / 2, dtype=torch.float64), torch.tensor(mid / 2, dtype=torch.float64)
        )
        low, high = (mid, high) if cdf < q else (low, mid)
    return (low + high) / 2


def test_chi2_quantile_against_known_values():
    assert chi2_quantile(0.95, 1) == pytest.approx(3.841459, abs=1e-5)
    assert chi2_quantile(0.99, 5) == pytest.approx(15.086272, abs=1e-5)


@pytest.mark.parametrize(
    "settings_",
    [
        dict(temperature=1.0),
        dict(temperature=1.7),
        dict(temperature=0.6, top_k=3),
        dict(top_p=0.8),
        dict(min_p=0.15),
        dict(temperature=0.8, top_k=5, top_p=0.9, min_p=0.05),
    ],
)
def test_sampled_frequencies_match_the_filtered_distribution(settings_):
    """20,000 seeded draws: removed tokens never appear, and Pearson's chi-square statistic
    of the kept tokens stays below its 1 - 1e-6 quantile (fixed seed: deterministic)."""
    n = 20_000
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.3, -0.5, -1.0, -3.0]], dtype=torch.float64)
    config = SamplingConfig(**settings_)
    expected = config.process(logits).softmax(dim=-1)[0]  # (V,) the distribution sampled from
    draws = sample(logits.expand(n, -1), **settings_, generator=torch.Generator().manual_seed(1234))
    counts = torch.bincount(draws, minlength=logits.shape[1]).double()
    support = expected > 0
    assert counts[~support].sum() == 0
    e = n * expected[support]
    chi2 = ((counts[support] - e) ** 2 / e).sum().item()
    df = int(support.sum()) - 1
    if df > 0:
        assert chi2 < chi2_quantile(1 - 1e-6, df)
    # and the total-variation distance is within a bound that holds with prob. >= 1 - 1e-6
    # (E[TV] <= sum sqrt(q_i / n) / 2, plus McDiarmid's deviation sqrt(ln(1e6) / (2 n)))
    tv = 0.5 * (counts / n - expected).abs().sum().item()
    assert tv <= 0.5 * expected.sqrt().sum().item() / math.sqrt(n) + math.sqrt(
        math.log(1e6) / (2 * n)
    )


# --------------------------------------------------------------------------- beam search


def trigram_step(table: torch.Tensor):
    """A step function whose next-token logits depend on the last two tokens."""

    def step(ids: torch.Tensor) -> torch.Tensor:  # (N, T) -> (N, V)
        return table[ids[:, -2], ids[:, -1]]

    return step


def exhaustive(step, prompt: list[int], vocab: int, length: int, eos: int | None, alpha: float):
    """Every possible hypothesis with its score, best first (exact enumeration)."""
    results = []
    for tokens in itertools.product(range(vocab), repeat=length):
        if eos is not None and eos in tokens:
            tokens = tokens[: tokens.index(eos) + 1]
        seq = prompt + list(tokens)
        logprob = 0.0
        for t in range(len(prompt), len(seq)):
            logprob += step(torch.tensor([seq[:t]])).log_softmax(-1)[0, seq[t]].item()
        results.append((tuple(seq), logprob / len(tokens) ** alpha))
    unique = dict(results)  # sequences that end early repeat; keep one copy
    return sorted(unique.items(), key=lambda kv: -kv[1])


@pytest.mark.parametrize("eos, alpha", [(None, 1.0), (4, 0.0), (4, 1.0), (4, 2.0), (4, -0.5)])
def test_beam_search_equals_exhaustive_search(eos, alpha):
    """V = 5, 4 new tokens. With num_beams >= every candidate, beam search never prunes:
    its finished list is the exact ranking of all hypotheses. With V**3 beams (every
    prefix survives until the last step) and no end token it still finds the best."""
    vocab, length, prompt = 5, 4, [0, 1]
    step = trigram_step(
        torch.randn(
            vocab, vocab, vocab, generator=torch.Generator().manual_seed(7), dtype=torch.float64
        )
    )
    truth = exhaustive(step, prompt, vocab, length, eos, alpha)
    found = beam_search(step, torch.tensor([prompt]), vocab**length, length, eos, alpha)[0]
    assert [tuple(h.sequence.tolist()) for h in found] == [seq for seq, _ in truth]
    torch.testing.assert_close(
        torch.tensor([h.score for h in found]),
        torch.tensor([s for _, s in truth]),
        atol=1e-9,
        rtol=1e-9,
    )
    if eos is None:
        best = beam_search(step, torch.tensor([prompt]), vocab ** (length - 1), length)[0][0]
        assert tuple(best.sequence.tolist()) == truth[0][0]


def greedy_decode(step, prompt: torch.Tensor, n: int) -> torch.Tensor:
    ids = prompt
    for _ in range(n):
        ids = torch.cat([ids, greedy(step(ids))[:, None]], dim=1)
    return ids


def test_beam_search_beats_greedy_where_greedy_is_short_sighted():
    """From token 0: token 1 is likelier (0.6) but leads to a flat distribution; token 2
    (0.4) leads to a near-certain continuation. Greedy picks 1; two beams find 2, 2."""
    probs = torch.tensor(
        [[0.0, 0.6, 0.4], [1 / 3, 1 / 3, 1 / 3], [0.005, 0.005, 0.99]], dtype=torch.float64
    )
    table = probs.clamp_min(1e-12).log()
    step = lambda ids: table[ids[:, -1]]  # noqa: E731  a bigram model
    prompt = torch.tensor([[0]])
    assert greedy_decode(step, prompt, 2)[0, 1].item() == 1
    seq, score = beam_search(step, prompt, num_beams=2, max_new_tokens=2, length_penalty=0.0)[0][0]
    assert seq.tolist() == [0, 2, 2]
    assert score == pytest.approx(math.log(0.4 * 0.99), abs=1e-12)
    assert score > math.log(0.6 / 3)  # the best greedy can do


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 3))
def test_one_beam_is_greedy_decoding(seed, batch):
    g = torch.Generator().manual_seed(seed)
    step = trigram_step(torch.randn(6, 6, 6, generator=g))
    prompt = torch.randint(0, 6, (batch, 2), generator=g)
    found = beam_search(step, prompt, num_beams=1, max_new_tokens=5)
    expected = greedy_decode(step, prompt, 5)
    for b in range(batch):
        assert len(found[b]) == 1
        assert torch.equal(found[b][0].sequence, expected[b])


def test_beam_scores_agree_with_sequence_logprob_and_batching():
    g = torch.Generator().manual_seed(3)
    step = trigram_step(torch.randn(7, 7, 7, generator=g, dtype=torch.float64))
    prompts = torch.tensor([[0, 1], [2, 3], [4, 4]])
    together = beam_search(
        step, prompts, num_beams=3, max_new_tokens=6, eos_token_id=5, length_penalty=1.3
    )
    for b in range(3):
        alone = beam_search(step, prompts[b : b + 1], 3, 6, eos_token_id=5, length_penalty=1.3)[0]
        assert [h.sequence.tolist() for h in alone] == [h.sequence.tolist() for h in together[b]]
        scores = [h.score for h in together[b]]
        assert scores == sorted(scores, reverse=True)
        for seq, score in together[b]:
            n_new = seq.shape[0] - 2
            assert seq[2:-1].ne(5).all()  # the end token only ever comes last
            logprob = sequence_logprob(step, seq[None], prompt_len=2).item()
            assert score == pytest.approx(logprob / n_new**1.3, abs=1e-9)


def _tiny_gpt2(vocab: int, eos: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=vocab, n_positions=32, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=0, eos_token_id=eos, pad_token_id=eos,
    )  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(4.0)  # sharper next-token distributions (lm_head is tied)
    return model


def _transformers_beams(model, prompts, num_beams, new, eos, alpha):
    """transformers' beam search with early_stopping="never" (its exact stopping rule)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return model.generate(
            prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
            num_beams=num_beams, num_return_sequences=num_beams, max_new_tokens=new,
            eos_token_id=eos, pad_token_id=eos, length_penalty=alpha, early_stopping="never",
            output_scores=True, return_dict_in_generate=True,
        )  # fmt: skip


@pytest.mark.parametrize("alpha", [1.0, 0.0, 2.0, -1.0])
def test_beam_search_matches_transformers_generate(alpha):
    """transformers' beam search with early_stopping="never" (its exact stopping rule):
    same hypotheses in the same order with the same scores."""
    vocab, eos, num_beams, new = 11, 3, 3, 6
    model = _tiny_gpt2(vocab, eos)
    prompts = torch.randint(0, vocab, (2, 4), generator=torch.Generator().manual_seed(1))
    out = _transformers_beams(model, prompts, num_beams, new, eos, alpha)
    ours = beam_search(lambda ids: model(ids).logits[:, -1], prompts, num_beams, new, eos, alpha)
    n_ended = 0
    for b in range(2):
        for r in range(num_beams):
            theirs = out.sequences[b * num_beams + r].tolist()
            generated = theirs[4:]
            if eos in generated:  # transformers pads finished hypotheses with eos
                generated = generated[: generated.index(eos) + 1]
                n_ended += 1
            assert ours[b][r].sequence.tolist() == theirs[:4] + generated
            assert ours[b][r].score == pytest.approx(
                out.sequences_scores[b * num_beams + r].item(), rel=1e-5
            )
    assert n_ended > 0  # the end-of-sequence path was exercised


@pytest.mark.slow
def test_beam_search_matches_transformers_on_many_small_searches():
    """72 searches on tiny GPT-2s (V = 6, end token often likely, length penalties != 1):
    exercises the early-stopping bound with a length penalty and the rule that only the
    num_beams best candidates may end. Mutating either (a bound that ignores the penalty,
    an end token accepted from any rank) makes some of these differ from transformers."""
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab, eos, prompt_len, new = 6, 1, 3, 7
    differ = []
    for seed, alpha, num_beams, eos_boost in itertools.product(
        range(6), (0.5, 2.0, -0.5), (2, 3), (1.0, 2.5)
    ):
        torch.manual_seed(seed)
        config = GPT2Config(
            vocab_size=vocab, n_positions=32, n_embd=16, n_layer=1, n_head=2,
            bos_token_id=0, eos_token_id=eos, pad_token_id=eos,
        )  # fmt: skip
        model = GPT2LMHeadModel(config).eval()
        with torch.no_grad():
            model.transformer.wte.weight.mul_(3.0)
            model.transformer.wte.weight[eos] *= eos_boost  # tied head: the end token is likelier
        prompts = torch.randint(0, vocab, (2, prompt_len), generator=torch.Generator().manual_seed(seed))
        out = _transformers_beams(model, prompts, num_beams, new, eos, alpha)
        with torch.no_grad():
            ours = beam_search(lambda ids, m=model: m(ids).logits[:, -1], prompts, num_beams, new,
                               eos, alpha)  # fmt: skip
        for b, r in itertools.product(range(2), range(num_beams)):
            theirs = out.sequences[b * num_beams + r].tolist()
            generated = theirs[prompt_len:]
            if eos in generated:  # transformers pads finished hypotheses with eos
                generated = generated[: generated.index(eos) + 1]
            same = ours[b][r].sequence.tolist() == theirs[:prompt_len] + generated
            score = out.sequences_scores[b * num_beams + r].item()
            if not same or ours[b][r].score != pytest.approx(score, rel=1e-5, abs=1e-6):
                differ.append((seed, alpha, num_beams, eos_boost, b, r))
    assert differ == []


# --------------------------------------------------------------------------- best-of-N


def test_sequence_logprob_full_model_and_step_fn_agree():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(6, 6, generator=g, dtype=torch.float64)
    full = lambda ids: table[ids]  # noqa: E731  (B, T) -> (B, T, V), a bigram "model"
    step = lambda ids: table[ids[:, -1]]  # noqa: E731  (B, T) -> (B, V)
    ids = torch.randint(0, 6, (3, 7), generator=g)
    expected = sum(
        table[ids[:, t - 1]].log_softmax(-1).gather(-1, ids[:, t, None])[:, 0] for t in range(2, 7)
    )
    torch.testing.assert_close(sequence_logprob(full, ids, 2), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(sequence_logprob(step, ids, 2), expected, atol=1e-12, rtol=0)
    assert sequence_logprob(full, ids, 7).tolist() == [0.0, 0.0, 0.0]


def test_best_of_n_picks_the_highest_score():
    samples = iter(
        [torch.tensor([1, 2]), torch.tensor([3]), torch.tensor([4, 5, 6]), torch.tensor([7])]
    )
    result = best_of_n(lambda: next(samples), 4, scorer=lambda s: float(len(s)) - 0.1 * s[0].item())
    assert isinstance(result, BestOfN)
    assert result.sequence.tolist() == [4, 5, 6]
    assert result.score == pytest.approx(2.6)
    assert len(result.candidates) == len(result.scores) == 4
    assert result.score == max(result.scores)
    ties = iter([torch.tensor([1]), torch.tensor([2])])
    assert best_of_n(lambda: next(ties), 2, scorer=lambda s: 0.0).sequence.tolist() == [1]


def test_best_of_n_default_scorer_is_the_log_probability():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(5, 5, generator=g)
    step = lambda ids: table[ids[:, -1]]  # noqa: E731
    prompt = torch.tensor([[1, 2]])
    config = SamplingConfig(temperature=1.5)

    def generate() -> torch.Tensor:
        ids = prompt
        for _ in range(4):
            ids = torch.cat([ids, config.choose(step(ids), ids, g)[:, None]], dim=1)
        return ids[0]

    result = best_of_n(generate, 8, model=step, prompt_len=2)
    logprobs = [sequence_logprob(step, c[None], 2).item() for c in result.candidates]
    assert result.scores == pytest.approx(logprobs, abs=1e-6)
    assert result.score == max(logprobs)


# --------------------------------------------------------------------------- diversity


def test_distinct_n_and_repetition_rate():
    assert distinct_n(["the cat sat", "the cat ran"], 1) == pytest.approx(4 / 6)
    assert distinct_n(["the cat sat", "the cat ran"], 2) == pytest.approx(3 / 4)
    assert distinct_n([[1, 2, 3], torch.tensor([1, 2, 3])], 3) == pytest.approx(1 / 2)
    assert distinct_n(["a b", "c"], 3) == 0.0
    assert distinct_n(["x y z"], 1) == 1.0
    assert repetition_rate_fn("the the the the", 1) == pytest.approx(3 / 4)
    assert repetition_rate_fn([1, 2, 3, 1, 2, 3], 3) == pytest.approx(1 / 4)
    assert repetition_rate_fn(torch.tensor([5, 6, 7]), 2) == 0.0
    assert repetition_rate_fn("a", 2) == 0.0


# --------------------------------------------------------------------------- error paths


LOGITS = torch.zeros(2, 5)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: greedy([[1.0, 2.0]]), TypeError, "logits"),
        (lambda: greedy(torch.zeros(5)), ValueError, "logits"),
        (lambda: greedy(torch.zeros(2, 5, dtype=torch.long)), TypeError, "logits"),
        (lambda: greedy(torch.zeros(2, 0)), ValueError, "logits"),
        (lambda: greedy(torch.tensor([[0.0, float("nan")]])), ValueError, "NaN"),
        (lambda: greedy(torch.tensor([[0.0, INF]])), ValueError, r"\+inf"),
        (lambda: greedy(torch.tensor([[0.0, 1.0], [-INF, -INF]])), ValueError, "row 1"),
        (lambda: apply_temperature(LOGITS, -0.1), ValueError, "temperature"),
        (lambda: apply_temperature(LOGITS, "hot"), TypeError, "temperature"),
        (lambda: top_k_filter(LOGITS, 0), ValueError, "k"),
        (lambda: top_k_filter(LOGITS, 2.0), TypeError, "k"),
        (lambda: top_p_filter(LOGITS, 0.0), ValueError, "p"),
        (lambda: top_p_filter(LOGITS, 1.5), ValueError, "p"),
        (lambda: top_p_filter(LOGITS, 0.5, min_tokens_to_keep=0), ValueError, "min_tokens_to_keep"),
        (lambda: min_p_filter(LOGITS, -0.1), ValueError, "p"),
        (lambda: min_p_filter(LOGITS, 1.1), ValueError, "p"),
        (
            lambda: repetition_penalty(LOGITS, torch.zeros(2, 3, dtype=torch.long), 0.0),
            ValueError,
            "penalty",
        ),
        (lambda: repetition_penalty(LOGITS, torch.zeros(2, 3), 1.2), TypeError, "input_ids"),
        (
            lambda: repetition_penalty(LOGITS, torch.zeros(3, 3, dtype=torch.long), 1.2),
            ValueError,
            "input_ids",
        ),
        (lambda: repetition_penalty(LOGITS, torch.full((2, 3), 5), 1.2), ValueError, "input_ids"),
        (lambda: repetition_penalty(LOGITS, torch.full((2, 3), -1), 1.2), ValueError, "input_ids"),
        (lambda: sample(LOGITS, temperature=-1.0), ValueError, "temperature"),
        (lambda: sample(LOGITS, top_p=0.0), ValueError, "top_p"),
        (lambda: sample(LOGITS, top_p=1.01), ValueError, "top_p"),
        (lambda: sample(LOGITS, top_k=0), ValueError, "top_k"),
        (lambda: sample(LOGITS, min_p=1.5), ValueError, "min_p"),
        (lambda: sample(LOGITS, generator=0), TypeError, "generator"),
        (lambda: SamplingConfig(repetition_penalty=-1.0), ValueError, "repetition_penalty"),
        (lambda: SamplingConfig(do_sample=1), TypeError, "do_sample"),
        (lambda: SamplingConfig(repetition_penalty=1.2).process(LOGITS), ValueError, "input_ids"),
        (lambda: distinct_n("a b c", 1), TypeError, "texts"),
        (lambda: distinct_n(["a b"], 0), ValueError, "n"),
        (lambda: distinct_n([3.5], 1), TypeError, r"texts\[0\]"),
        (lambda: repetition_rate_fn(torch.zeros(2, 2), 1), ValueError, "tokens"),
        (
            lambda: sequence_logprob(lambda i: i, torch.zeros(1, 3, dtype=torch.long), 4),
            ValueError,
            "prompt_len",
        ),
        (
            lambda: sequence_logprob(lambda i: i, torch.zeros(1, 3, dtype=torch.long), 0),
            ValueError,
            "prompt_len",
        ),
        (lambda: best_of_n(lambda: torch.tensor([1]), 2), ValueError, "scorer"),
        (lambda: best_of_n(lambda: torch.tensor([1]), 0, scorer=len), ValueError, "n"),
        (
            lambda: best_of_n(lambda: torch.tensor([1]), 1, scorer=lambda s: float("nan")),
            ValueError,
            "NaN",
        ),
    ],
)
def test_bad_arguments_raise(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_beam_search_bad_arguments_raise():
    step = lambda ids: torch.zeros(ids.shape[0], 4)  # noqa: E731
    ids = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="num_beams"):
        beam_search(step, ids, 0, 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        beam_search(step, ids, 2, 0)
    with pytest.raises(ValueError, match="input_ids"):
        beam_search(step, torch.zeros(2, dtype=torch.long), 2, 3)
    with pytest.raises(ValueError, match="eos_token_id"):
        beam_search(step, ids, 2, 3, eos_token_id=4)
    with pytest.raises(TypeError, match="length_penalty"):
        beam_search(step, ids, 2, 3, length_penalty="long")
    with pytest.raises(ValueError, match="step_fn output"):
        beam_search(lambda i: torch.zeros(1, 4, 4), ids, 2, 3)
    with pytest.raises(ValueError, match="step_fn output"):
        beam_search(lambda i: torch.zeros(7, 4), ids, 2, 3)
    with pytest.raises(ValueError, match="step_fn output"):
        beam_search(lambda i: torch.full((i.shape[0], 4), float("nan")), ids, 2, 3)


def test_docstring_examples():
    import doctest

    import llmfoundations.sampling as module

    assert doctest.testmod(module).failed == 0


def test_hypothesis_unpacks_as_sequence_and_score():
    h = Hypothesis(torch.tensor([1, 2]), -0.5)
    seq, score = h
    assert seq.tolist() == [1, 2] and score == -0.5


def test_choose_checks_the_logits_once_and_equals_its_unchecked_core(monkeypatch):
    from llmfoundations import sampling as sampling_module

    calls = []
    original = sampling_module._check_logits
    monkeypatch.setattr(sampling_module, "_check_logits", lambda *a, **k: calls.append(1) or original(*a, **k))
    cfg = SamplingConfig(temperature=0.7, top_k=5, top_p=0.9, min_p=0.05, repetition_penalty=1.3)
    logits = torch.randn(3, 17, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, 17, (3, 4), generator=torch.Generator().manual_seed(1))
    checked = cfg.choose(logits, ids, torch.Generator().manual_seed(2))
    assert len(calls) == 1  # not once more per processor
    unchecked = cfg.choose_unchecked(logits, ids, torch.Generator().manual_seed(2))
    assert torch.equal(checked, unchecked)
    assert torch.equal(cfg.process(logits, ids), cfg._process(logits, ids))
