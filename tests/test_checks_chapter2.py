"""The chapter-2 checks pass correct solutions and fail plausible mistakes.

(Blank answers and non-functions are tested for every check in ``test_checks.py``.)"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmfoundations import checks
from llmfoundations.checks import chapter2
from llmfoundations.models import EncoderMLM, ModelConfig
from llmfoundations.scaling import CHINCHILLA_FIT

# ----------------------------------------------------------------- 02-1


def last_token_states(hidden, lengths):
    return hidden[torch.arange(hidden.shape[0]), lengths - 1]


def last_token_states_gather(hidden, lengths):  # another correct way
    index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
    return hidden.gather(1, index).squeeze(1)


def gpt1_loss(class_logits, labels, lm_logits, ids, lam):
    task = F.cross_entropy(class_logits, labels)
    lm = F.cross_entropy(lm_logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    return task + lam * lm


# ----------------------------------------------------------------- 02-2


def segment_ids(ids, sep_id):
    seps_before = (ids == sep_id).long().cumsum(dim=1)  # [SEP]s up to and including t
    is_sep = ids == sep_id
    after_first = (seps_before - is_sep.long()) >= 1  # strictly after the first [SEP]
    return (after_first & (seps_before - is_sep.long() < 2)).long()


@torch.no_grad()
def pseudo_log_likelihood(model, ids, mask_id):
    total = 0.0
    for t in range(1, len(ids) - 1):
        masked = ids.clone()
        masked[t] = mask_id
        logprobs = model(masked[None]).logits[0, t].log_softmax(-1)
        total += logprobs[ids[t]].item()
    return torch.tensor(total)


# ----------------------------------------------------------------- 02-3


def calibrate(probs, content_free):
    scaled = probs / content_free
    return scaled / scaled.sum(dim=-1, keepdim=True)


def continuation_logprob(logits, ids, prompt_len):
    logprobs = logits[:, prompt_len - 1 : -1].log_softmax(-1)  # (B, G, V)
    return logprobs.gather(-1, ids[:, prompt_len:, None]).squeeze(-1).sum(-1)


# ----------------------------------------------------------------- 02-4


def chinchilla_loss(N, D, params):
    p = params
    return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]


def optimal_allocation(C, params):
    a, b = params["alpha"], params["beta"]
    G = (a * params["A"] / (b * params["B"])) ** (1 / (a + b))
    return G * (C / 6) ** (b / (a + b)), (C / 6) ** (a / (a + b)) / G


CORRECT = [
    (checks.check_last_token_states, last_token_states),
    (checks.check_last_token_states, last_token_states_gather),
    (checks.check_gpt1_loss, gpt1_loss),
    (checks.check_segment_ids, segment_ids),
    (checks.check_pseudo_log_likelihood, pseudo_log_likelihood),
    (checks.check_contextual_calibration, calibrate),
    (checks.check_continuation_logprob, continuation_logprob),
    (checks.check_chinchilla_loss, chinchilla_loss),
    (checks.check_optimal_allocation, optimal_allocation),
]


@pytest.mark.parametrize(("check", "solution"), CORRECT, ids=lambda x: getattr(x, "__name__", ""))
def test_correct_solutions_pass(check, solution, capsys):
    check(solution)
    assert "✔" in capsys.readouterr().out


def _wrong_pll_no_mask(model, ids, mask_id):
    logprobs = model(ids[None]).logits[0].log_softmax(-1)  # sees the answer
    t = torch.arange(1, len(ids) - 1)
    return logprobs[t, ids[t]].sum()


def _wrong_pll_all_masked(model, ids, mask_id):
    masked = ids.clone()
    masked[1:-1] = mask_id  # everything hidden at once
    logprobs = model(masked[None]).logits[0].log_softmax(-1)
    t = torch.arange(1, len(ids) - 1)
    return logprobs[t, ids[t]].sum()


def _wrong_pll_scores_specials(model, ids, mask_id):
    total = 0.0
    for t in range(len(ids)):  # also [CLS] and [SEP]
        masked = ids.clone()
        masked[t] = mask_id
        total += model(masked[None]).logits[0, t].log_softmax(-1)[ids[t]].item()
    return torch.tensor(total)


def _wrong_segments_first_sep_in_b(ids, sep_id):
    seps = (ids == sep_id).long().cumsum(dim=1)
    return ((seps == 1) | ((seps == 2) & (ids == sep_id))).long()


def _wrong_segments_padding_in_b(ids, sep_id):
    seps = (ids == sep_id).long().cumsum(dim=1) - (ids == sep_id).long()
    return (seps >= 1).long()


WRONG = [
    # 02-1: the last column is padding; off by one
    (checks.check_last_token_states, lambda h, n: h[:, -1]),
    (
        checks.check_last_token_states,
        lambda h, n: h[torch.arange(h.shape[0]), n.clamp(max=h.shape[1] - 1)],
    ),
    (checks.check_last_token_states, lambda h, n: h[:, 0]),
    # 02-1: no shift; lam on the task term; the LM term alone
    (
        checks.check_gpt1_loss,
        lambda c, y, lm, ids, lam: (
            F.cross_entropy(c, y) + lam * F.cross_entropy(lm.flatten(0, 1), ids.flatten())
        ),
    ),
    (
        checks.check_gpt1_loss,
        lambda c, y, lm, ids, lam: (
            lam * F.cross_entropy(c, y) + gpt1_loss(c, y, lm, ids, 1.0) - F.cross_entropy(c, y)
        ),
    ),
    (checks.check_gpt1_loss, lambda c, y, lm, ids, lam: F.cross_entropy(c, y)),
    # 02-2
    (checks.check_segment_ids, _wrong_segments_first_sep_in_b),
    (checks.check_segment_ids, _wrong_segments_padding_in_b),
    (checks.check_pseudo_log_likelihood, _wrong_pll_no_mask),
    (checks.check_pseudo_log_likelihood, _wrong_pll_all_masked),
    (checks.check_pseudo_log_likelihood, _wrong_pll_scores_specials),
    # 02-3: multiplied instead of divided; not renormalised; normalised over the batch
    (checks.check_contextual_calibration, lambda p, cf: (p * cf) / (p * cf).sum(-1, keepdim=True)),
    (checks.check_contextual_calibration, lambda p, cf: p / cf),
    (checks.check_contextual_calibration, lambda p, cf: (p / cf) / (p / cf).sum(0, keepdim=True)),
    # 02-3: the off-by-one; probabilities; raw logits
    (
        checks.check_continuation_logprob,
        lambda lg, ids, p: (
            lg[:, p:].log_softmax(-1).gather(-1, ids[:, p:, None]).squeeze(-1).sum(-1)
        ),
    ),
    (
        checks.check_continuation_logprob,
        lambda lg, ids, p: (
            lg[:, p - 1 : -1].softmax(-1).gather(-1, ids[:, p:, None]).squeeze(-1).sum(-1)
        ),
    ),
    (
        checks.check_continuation_logprob,
        lambda lg, ids, p: lg[:, p - 1 : -1].gather(-1, ids[:, p:, None]).squeeze(-1).sum(-1),
    ),
    # 02-4: exponents swapped; E left out
    (
        checks.check_chinchilla_loss,
        lambda n, d, p: p["E"] + p["A"] / n ** p["beta"] + p["B"] / d ** p["alpha"],
    ),
    (
        checks.check_chinchilla_loss,
        lambda n, d, p: p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"],
    ),
    # 02-4: C not divided by 6; G inverted; N and D swapped
    (checks.check_optimal_allocation, lambda c, p: optimal_allocation(6 * c, p)),
    (
        checks.check_optimal_allocation,
        lambda c, p: (lambda n, d: (n / _g(p) ** 2, d * _g(p) ** 2))(*optimal_allocation(c, p)),
    ),
    (checks.check_optimal_allocation, lambda c, p: optimal_allocation(c, p)[::-1]),
]


def _g(p):
    a, b = p["alpha"], p["beta"]
    return (a * p["A"] / (b * p["B"])) ** (1 / (a + b))


@pytest.mark.parametrize(
    ("check", "wrong"), WRONG, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(WRONG)]
)
def test_plausible_mistakes_fail(check, wrong):
    with pytest.raises(AssertionError):
        check(wrong)


def test_pll_reference_matches_a_loop_over_positions():
    """The batched reference equals masking one position at a time."""
    torch.manual_seed(0)
    model = EncoderMLM(ModelConfig.bert(30, d_model=16, n_layers=2, n_heads=2)).eval()
    ids = torch.tensor([1, 7, 9, 12, 5, 2])
    expected = pseudo_log_likelihood(model, ids, 3)
    got = chapter2.reference_pseudo_log_likelihood(model, ids, 3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_pll_check_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.check_pseudo_log_likelihood(pseudo_log_likelihood)
    torch.testing.assert_close(torch.rand(3), expected, atol=0.0, rtol=0.0)


def test_calibration_undoes_a_constant_label_bias():
    """A prompt that multiplies every input's label odds by the same factor is undone exactly."""
    true = torch.tensor([[0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    bias = torch.tensor([3.0, 1.0])
    biased = true * bias / (true * bias).sum(-1, keepdim=True)
    content_free = bias / bias.sum()  # what the prompt says about an input with no content
    torch.testing.assert_close(calibrate(biased, content_free), true, atol=1e-6, rtol=1e-6)


def test_optimal_allocation_reference_spends_the_budget():
    n, d = optimal_allocation(1e22, CHINCHILLA_FIT)
    assert math.isclose(6 * n * d, 1e22, rel_tol=1e-9)
