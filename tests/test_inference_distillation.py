"""Tests of inference/distillation.py: Hinton's KD loss, GKD's generalized JSD (against
TRL), and the on-policy loss on tiny models."""

from __future__ import annotations

import doctest
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmfoundations.inference import distillation
from llmfoundations.inference.distillation import (
    IGNORE_INDEX,
    generalized_jsd,
    kd_loss,
    on_policy_distillation_loss,
)
from llmfoundations.models import DecoderLM, ModelConfig


def _batch(seed: int = 0, b: int = 3, t: int = 5, v: int = 7, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(b, t, v, generator=g, dtype=dtype) * 2
    teacher = torch.randn(b, t, v, generator=g, dtype=dtype) * 2
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[:, :2] = IGNORE_INDEX  # a prompt
    labels[1, 3:] = IGNORE_INDEX  # padding of a shorter row
    return student, teacher, labels


def test_doctests():
    assert doctest.testmod(distillation).failed == 0


# ----------------------------------------------------------------------------- kd_loss


def test_kd_loss_closed_form_on_two_tokens():
    # One position, V = 2: student logits (0, 0), teacher (ln 3, 0) at T = 2.
    s = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    T, alpha = 2.0, 0.25
    pt = [math.sqrt(3) / (math.sqrt(3) + 1), 1 / (math.sqrt(3) + 1)]  # softmax(t / 2)
    kl = sum(p * math.log(p / 0.5) for p in pt)
    out = kd_loss(s, t, temperature=T, alpha=1.0)
    assert out.soft_loss.item() == pytest.approx(kl, abs=1e-12)
    assert out.loss.item() == pytest.approx(T**2 * kl, abs=1e-12)
    assert out.hard_loss is None
    out = kd_loss(s, t, temperature=T, alpha=alpha, labels=torch.tensor([1]))
    assert out.hard_loss.item() == pytest.approx(math.log(2), abs=1e-12)
    want = alpha * T**2 * kl + (1 - alpha) * math.log(2)
    assert out.loss.item() == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
def test_kd_loss_equals_kldivloss_batchmean_and_cross_entropy(temperature):
    s, t, labels = _batch(seed=1)
    alpha = 0.7
    out = kd_loss(s, t, temperature, alpha, labels=labels)
    keep = labels.reshape(-1) != IGNORE_INDEX
    v = s.shape[-1]
    s_rows, t_rows = s.reshape(-1, v)[keep], t.reshape(-1, v)[keep]
    soft = nn.KLDivLoss(reduction="batchmean")(
        F.log_softmax(s_rows / temperature, dim=-1), F.softmax(t_rows / temperature, dim=-1)
    )
    hard = F.cross_entropy(s.reshape(-1, v), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.soft_loss, soft, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.hard_loss, hard, rtol=0, atol=1e-12)
    want = alpha * temperature**2 * soft + (1 - alpha) * hard
    torch.testing.assert_close(out.loss, want, rtol=0, atol=1e-12)
    # Without labels: every position, i.e. KLDivLoss(batchmean) on the flattened rows.
    out = kd_loss(s, t, temperature, 1.0)
    soft_all = nn.KLDivLoss(reduction="batchmean")(
        F.log_softmax(s.reshape(-1, v) / temperature, -1),
        F.softmax(t.reshape(-1, v) / temperature, -1),
    )
    torch.testing.assert_close(out.soft_loss, soft_all, rtol=0, atol=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_kd_loss_gradient_is_the_closed_form(temperature):
    s, t, labels = _batch(seed=2)
    n = s.shape[0] * s.shape[1]
    s = s.clone().requires_grad_(True)
    kd_loss(s, t, temperature, 1.0).loss.backward()
    # d/ds [T^2 * KL(softmax(t/T) || softmax(s/T))] / N = T (softmax(s/T) - softmax(t/T)) / N
    want = temperature * (F.softmax(s / temperature, -1) - F.softmax(t / temperature, -1)) / n
    torch.testing.assert_close(s.grad, want.detach(), rtol=0, atol=1e-12)

    # With labels and alpha: both terms, over the scored positions only.
    alpha = 0.3
    s.grad = None
    kd_loss(s, t, temperature, alpha, labels=labels).loss.backward()
    scored = (labels != IGNORE_INDEX)[..., None].double()  # (B, T, 1)
    m = scored.sum()
    onehot = F.one_hot(labels.clamp_min(0), s.shape[-1]).double()
    soft = temperature * (F.softmax(s / temperature, -1) - F.softmax(t / temperature, -1))
    hard = F.softmax(s, -1) - onehot
    want = (alpha * soft + (1 - alpha) * hard) * scored / m
    torch.testing.assert_close(s.grad, want.detach(), rtol=0, atol=1e-12)


def test_kd_loss_gives_zero_not_nan_without_scored_positions_and_with_inf_teacher():
    s, t, labels = _batch(seed=3, dtype=torch.float32)
    s.requires_grad_(True)
    out = kd_loss(s, t, 2.0, 0.5, labels=torch.full_like(labels, IGNORE_INDEX))
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert torch.isfinite(s.grad).all()
    t_filtered = t.clone()
    t_filtered[..., :3] = float("-inf")  # a top-k-filtered teacher: probability 0
    loss = kd_loss(s, t_filtered, 2.0, 1.0).loss
    assert torch.isfinite(loss)
    rows = t_filtered.reshape(-1, t.shape[-1])[:, 3:]
    ref = kd_loss(s.reshape(-1, t.shape[-1])[:, 3:], rows, 2.0, 1.0).soft_loss
    # the student still spends mass on the three filtered tokens, so its KL is larger
    assert loss.item() / 4.0 > ref.item()


def test_kd_loss_is_zero_when_the_student_is_the_teacher():
    _, t, _ = _batch(seed=4)
    assert kd_loss(t.clone(), t, 2.0, 1.0).loss.item() == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- generalized JSD


def test_jsd_endpoints_are_forward_and_reverse_kl():
    s, t, labels = _batch(seed=5)
    v = s.shape[-1]
    keep = labels.reshape(-1) != IGNORE_INDEX
    ls, lt = F.log_softmax(s.reshape(-1, v)[keep], -1), F.log_softmax(t.reshape(-1, v)[keep], -1)
    forward = (lt.exp() * (lt - ls)).sum(-1).mean()
    reverse = (ls.exp() * (ls - lt)).sum(-1).mean()
    torch.testing.assert_close(generalized_jsd(s, t, 0.0, labels=labels), forward, rtol=0, atol=1e-12)
    torch.testing.assert_close(generalized_jsd(s, t, 1.0, labels=labels), reverse, rtol=0, atol=1e-12)
    # beta = 0 at temperature T is kd_loss's soft term
    torch.testing.assert_close(
        generalized_jsd(s, t, 0.0, 2.0, labels=labels),
        kd_loss(s, t, 2.0, 1.0, labels=labels).soft_loss,
        rtol=0,
        atol=1e-12,
    )


def test_jsd_mixture_closed_form_symmetry_bounds_and_small_beta_limit():
    # One position, V = 2: p_s = (1/2, 1/2), p_t = (1/4, 3/4), beta = 1/2.
    s = torch.zeros(1, 2, dtype=torch.float64)
    t = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    ps, pt, m = [0.5, 0.5], [0.25, 0.75], [0.375, 0.625]
    want = 0.5 * sum(a * math.log(a / c) for a, c in zip(pt, m, strict=True)) + 0.5 * sum(
        a * math.log(a / c) for a, c in zip(ps, m, strict=True)
    )
    assert generalized_jsd(s, t, 0.5).item() == pytest.approx(want, abs=1e-12)

    s, t, _ = _batch(seed=6)
    half = generalized_jsd(s, t, 0.5, reduction="none")
    torch.testing.assert_close(half, generalized_jsd(t, s, 0.5, reduction="none"))  # symmetric
    assert (half >= 0).all() and (half <= math.log(2) + 1e-12).all()  # 0 <= JSD <= ln 2
    # JSD_beta / beta -> KL(teacher || student) as beta -> 0; (1 - beta) at the other end.
    eps = 1e-5
    fwd = generalized_jsd(s, t, 0.0, reduction="none")
    rev = generalized_jsd(s, t, 1.0, reduction="none")
    torch.testing.assert_close(generalized_jsd(s, t, eps, reduction="none") / eps, fwd, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(
        generalized_jsd(s, t, 1 - eps, reduction="none") / eps, rev, rtol=1e-3, atol=1e-4
    )


def test_jsd_reductions_and_masking():
    s, t, labels = _batch(seed=7)
    per_pos = generalized_jsd(s, t, 0.3, labels=labels, reduction="none")  # (B, T)
    assert per_pos.shape == labels.shape
    assert (per_pos[labels == IGNORE_INDEX] == 0).all()
    n = (labels != IGNORE_INDEX).sum()
    total = generalized_jsd(s, t, 0.3, labels=labels, reduction="sum")
    torch.testing.assert_close(total, per_pos.sum())
    torch.testing.assert_close(generalized_jsd(s, t, 0.3, labels=labels), total / n)
    torch.testing.assert_close(
        generalized_jsd(s, t, 0.3, labels=labels, reduction="mean"), total / (n * s.shape[-1])
    )
    # Without labels, batchmean divides by the first dimension (B), as TRL and KLDivLoss.
    torch.testing.assert_close(
        generalized_jsd(s, t, 0.3), generalized_jsd(s, t, 0.3, reduction="sum") / s.shape[0]
    )
    # Nothing scored: 0, not NaN.
    none = torch.full_like(labels, IGNORE_INDEX)
    for reduction in ("batchmean", "sum", "mean"):
        assert generalized_jsd(s, t, 0.3, labels=none, reduction=reduction).item() == 0.0


@pytest.fixture(scope="module")
def trl_jsd():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    pytest.importorskip("trl")
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    return GKDTrainer.generalized_jsd_loss


@pytest.mark.slow  # importing TRL takes ~10 s on 2 cores
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_jsd_equals_trl_generalized_jsd_loss(trl_jsd, beta, temperature):
    s, t, labels = _batch(seed=8)
    for lab in (None, labels):
        for reduction in ("batchmean", "sum", "mean"):
            ours = generalized_jsd(s, t, beta, temperature, labels=lab, reduction=reduction)
            theirs = trl_jsd(s, t, labels=lab, beta=beta, temperature=temperature, reduction=reduction)
            torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
        # TRL's "none" gives the elementwise (n_scored, V) terms; ours sums them over V.
        ours = generalized_jsd(s, t, beta, temperature, labels=lab, reduction="none")
        theirs = trl_jsd(s, t, labels=lab, beta=beta, temperature=temperature, reduction="none")
        kept = ours if lab is None else ours[lab != IGNORE_INDEX]
        torch.testing.assert_close(kept, theirs.sum(-1), rtol=1e-10, atol=1e-12)
    # (N, V) logits and float32, as a trainer passes them after a reshape
    s32, t32 = s.float().reshape(-1, s.shape[-1]), t.float().reshape(-1, s.shape[-1])
    lab = labels.reshape(-1)
    torch.testing.assert_close(
        generalized_jsd(s32, t32, beta, temperature, labels=lab),
        trl_jsd(s32, t32, labels=lab, beta=beta, temperature=temperature),
        rtol=1e-5,
        atol=1e-6,
    )


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs_are_refused():
    s, t, labels = _batch(seed=9)
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(s, t[..., :-1], 1.0, 1.0)
    with pytest.raises(ValueError, match="same shape"):
        generalized_jsd(s, t[:1])
    with pytest.raises(TypeError, match="floating"):
        kd_loss(s.long(), t, 1.0, 1.0)
    with pytest.raises(ValueError, match="dimensions"):
        generalized_jsd(s[0, 0], t[0, 0])
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, t, 0.0, 1.0)
    with pytest.raises(ValueError, match="temperature"):
        generalized_jsd(s, t, 0.5, -1.0)
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(s, t, 1.0, 1.5, labels=labels)
    with pytest.raises(ValueError, match="pass labels"):
        kd_loss(s, t, 1.0, 0.5)
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(s, t, beta=1.2)
    with pytest.raises(ValueError, match="reduction"):
        generalized_jsd(s, t, reduction="avg")
    with pytest.raises(ValueError, match="labels must have"):
        kd_loss(s, t, 1.0, 0.5, labels=labels[:, 1:])
    with pytest.raises(TypeError, match="labels must have dtype"):
        generalized_jsd(s, t, labels=labels.float())
    bad = labels.clone()
    bad[0, 4] = s.shape[-1]
    with pytest.raises(ValueError, match=r"\[0, V=7\)"):
        kd_loss(s, t, 1.0, 0.5, labels=bad)
    bad[0, 4] = -3
    with pytest.raises(ValueError, match="-100 or lie"):
        generalized_jsd(s, t, labels=bad)


# ----------------------------------------------------------------------------- on-policy


def _tiny(seed: int, vocab: int = 23, d_model: int = 32) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(ModelConfig.llama(vocab_size=vocab, d_model=d_model, max_seq_len=64))


def test_on_policy_loss_scores_the_students_own_tokens():
    student, teacher = _tiny(0), _tiny(1, d_model=48)
    prompts = [[1, 2, 3, 4], [5, 6]]
    g = torch.Generator().manual_seed(0)
    out = on_policy_distillation_loss(
        student, teacher, prompts, 6, beta=0.5, temperature=1.5, stop_token_ids=[7], generator=g
    )
    b, width = out.sequences.shape
    assert b == 2 and 4 < width <= 4 + 6  # fewer columns if every row stopped early
    assert (out.labels[:, :4] == IGNORE_INDEX).all()  # the prompt (and its padding)
    assert out.attention_mask[1, :2].tolist() == [0, 0]  # left padding
    new = out.sequences[:, 4:]
    for row in range(2):
        toks = new[row].tolist()
        end = toks.index(7) + 1 if 7 in toks else len(toks)
        assert out.labels[row, 4 : 4 + end].tolist() == toks[:end]  # the stop token is learned
        assert (out.labels[row, 4 + end :] == IGNORE_INDEX).all()
    # The loss is generalized_jsd on the shifted logits, with the same labels.
    s_logits = student(out.sequences, attention_mask=out.attention_mask).logits
    t_logits = teacher(out.sequences, attention_mask=out.attention_mask).logits
    want = generalized_jsd(
        s_logits[:, :-1], t_logits[:, :-1], 0.5, 1.5, labels=out.labels[:, 1:]
    )
    torch.testing.assert_close(out.loss, want, rtol=1e-6, atol=1e-7)
    # The same generator seed reproduces the student's samples (generate is used).
    g = torch.Generator().manual_seed(0)
    again = on_policy_distillation_loss(
        student, teacher, prompts, 6, beta=0.5, temperature=1.5, stop_token_ids=[7], generator=g
    )
    assert torch.equal(again.sequences, out.sequences)


def test_on_policy_gradients_reach_the_student_only_and_vanish_for_a_copy():
    student, teacher = _tiny(2), _tiny(3)
    teacher.train()
    out = on_policy_distillation_loss(student, teacher, torch.tensor([[1, 2, 3]]), 5)
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert teacher.training  # its mode is restored
    copy = _tiny(2)  # the same weights as the student
    loss = on_policy_distillation_loss(student, copy, torch.tensor([[1, 2, 3]]), 5).loss
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_on_policy_refuses_bad_inputs():
    student = _tiny(0)
    with pytest.raises(ValueError, match="vocabulary"):
        on_policy_distillation_loss(student, _tiny(1, vocab=24), [[1, 2]], 3)
    with pytest.raises(TypeError, match="teacher must be a DecoderLM"):
        on_policy_distillation_loss(student, nn.Linear(2, 2), [[1, 2]], 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        on_policy_distillation_loss(student, student, [[1, 2]], 0)
    with pytest.raises(ValueError, match="no prompt may be empty"):
        on_policy_distillation_loss(student, student, [[1, 2], []], 3)
    with pytest.raises(ValueError, match="beta"):
        on_policy_distillation_loss(student, student, [[1, 2]], 3, beta=2.0)
