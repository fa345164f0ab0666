"""The checks of Labs 01-4 and 01-5 grade: right answers pass, known mistakes fail with a hint.

The references inside the checks are held against independent ones: ``DecoderLM``'s own
loss, Hugging Face's GPT-2 parameter count, ``MultiHeadAttention``'s built-in causal and
padding masks, and the 80/10/10 rates of BERT's masking measured on many tokens.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations import checks
from llmfoundations.attention import MultiHeadAttention
from llmfoundations.checks import models as model_checks
from llmfoundations.models import IGNORE_INDEX, DecoderLM, ModelConfig

# ------------------------------------------------------------------ 01-4: the loss


def good_loss(logits, labels):
    # (B, V, T-1) layout that F.cross_entropy also accepts: no flattening needed
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100)


def good_loss_by_hand(logits, labels):
    logp = logits[:, :-1].log_softmax(dim=-1)  # (B, T-1, V)
    targets = labels[:, 1:]
    keep = targets != -100
    picked = logp.gather(-1, targets.clamp_min(0)[..., None])[..., 0]  # (B, T-1)
    return -(picked * keep).sum() / keep.sum()


@pytest.mark.parametrize("good", [good_loss, good_loss_by_hand])
def test_causal_lm_loss_passes_correct_answers(good, capsys):
    checks.check_causal_lm_loss(good)
    assert "✔ causal_lm_loss: all 6 cases" in capsys.readouterr().out


def _flatten_then_shift(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1)[:-1], labels.flatten()[1:], ignore_index=-100)


def _mean_over_all(logits, labels):
    per_token = F.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none"
    )
    return per_token.mean()  # ignored positions count as 0


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda lg, y: F.cross_entropy(lg.transpose(1, 2), y), "without the shift"),
        (lambda lg, y: F.cross_entropy(lg[:, 1:].transpose(1, 2), y[:, :-1]), "wrong way"),
        (_flatten_then_shift, "flattened before shifting"),
        (_mean_over_all, "-100 must be left out"),
        (lambda lg, y: good_loss(lg, y).reshape(1), None),  # shape (1,) instead of a scalar
    ],
)
def test_causal_lm_loss_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="causal_lm_loss, case") as err:
        checks.check_causal_lm_loss(wrong)
    if hint:
        assert hint in str(err.value)


def test_loss_reference_matches_the_model_s_own_loss():
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig.gpt(vocab_size=23, d_model=16, n_layers=1, n_heads=2))
    ids = torch.randint(0, 23, (3, 12))
    labels = ids.clone()
    labels[0, 8:] = IGNORE_INDEX
    labels[2, :5] = IGNORE_INDEX
    out = model(ids, labels=labels)
    expected = model_checks.reference_causal_lm_loss(out.logits, labels)
    torch.testing.assert_close(expected, out.loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(good_loss_by_hand(out.logits, labels), out.loss, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------- 01-4: parameter count


def good_count(vocab_size, d_model, n_layers, max_seq_len, d_ff=None):
    d_ff = 4 * d_model if d_ff is None else d_ff
    block = 4 * d_model * (d_model + 1) + d_model * d_ff + d_ff + d_ff * d_model + d_model
    block += 2 * 2 * d_model
    return (vocab_size + max_seq_len) * d_model + n_layers * block + 2 * d_model


def test_count_parameters_passes_a_correct_answer(capsys):
    checks.check_count_parameters(good_count)
    assert "✔ count_parameters: all 5 cases" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (model_checks._count_forgot_biases, "has a bias"),
        (model_checks._count_forgot_positions, "learns its positions"),
        (model_checks._count_untied_head, "shares its weight"),
        (model_checks._count_forgot_final_norm, "one more LayerNorm"),
        (lambda v, c, n, p, d_ff=None: good_count(v, c, n, p), None),  # ignores d_ff
    ],
)
def test_count_parameters_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="count_parameters, case") as err:
        checks.check_count_parameters(wrong)
    if hint:
        assert hint in str(err.value)


@settings(max_examples=15, deadline=None)
@given(
    vocab=st.integers(2, 300),
    heads=st.integers(1, 4),
    head_dim=st.integers(1, 12),
    layers=st.integers(1, 3),
    seq=st.integers(1, 64),
    d_ff=st.one_of(st.none(), st.integers(1, 50)),
)
def test_closed_form_count_matches_the_model(vocab, heads, head_dim, layers, seq, d_ff):
    config = ModelConfig.gpt(vocab, heads * head_dim, layers, heads, max_seq_len=seq, d_ff=d_ff)
    expected = DecoderLM(config).num_parameters()
    assert model_checks.reference_count_parameters(vocab, heads * head_dim, layers, seq, d_ff) == expected


@pytest.mark.slow  # importing transformers takes seconds
def test_gpt2_small_count_matches_hugging_face():
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        hf = GPT2LMHeadModel(GPT2Config())
        ours = DecoderLM(ModelConfig.gpt(50257, d_model=768, n_layers=12, n_heads=12, max_seq_len=1024))
    hf_count = sum(p.numel() for p in hf.parameters())  # tied weights appear once
    assert hf_count == model_checks.GPT2_SMALL_PARAMETERS
    assert ours.num_parameters() == model_checks.GPT2_SMALL_PARAMETERS
    assert model_checks.reference_count_parameters(50257, 768, 12, 1024) == hf_count


# --------------------------------------------------------------- 01-4: residual block


def good_residual_block(x, f, norm, norm_position):
    if norm_position == "pre":
        return x + f(norm(x))
    return norm(x + f(x))


@pytest.mark.parametrize(
    ("check", "answer"),
    [("check_residual_block", good_residual_block), ("check_causal_lm_loss", good_loss)],
)
def test_checks_leave_the_students_random_state_alone(check, answer):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    getattr(checks, check)(answer)
    assert torch.equal(torch.get_rng_state(), before)


def test_residual_block_passes_a_correct_answer(capsys):
    checks.check_residual_block(good_residual_block)
    out = capsys.readouterr().out
    assert "✔ residual_block: all 6 cases" in out and "TransformerBlock" in out


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (model_checks._block_norm_output, "normalise the sub-layer's *input*"),
        (model_checks._block_swapped, "swapped"),
        (model_checks._block_no_residual, "add x back"),
        (lambda x, f, norm, pos: x + f(norm(x)), "swapped"),  # pre-norm for both
    ],
)
def test_residual_block_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="residual_block, case") as err:
        checks.check_residual_block(wrong)
    assert hint in str(err.value)


def test_residual_reference_rejects_an_unknown_position():
    with pytest.raises(ValueError, match="norm_position"):
        model_checks.reference_residual_block(torch.zeros(1, 4), torch.tanh, torch.nn.Identity(), "mid")


# ------------------------------------------------------------------- 01-5: the masks


def good_causal_padding_mask(pad_mask):
    t = pad_mask.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()  # (T, T)
    return causal[None] & pad_mask.bool()[:, None, :]  # (B, T, T)


def test_causal_padding_mask_passes_a_correct_answer(capsys):
    checks.check_causal_padding_mask(good_causal_padding_mask)
    assert "✔ causal_padding_mask: all 4 cases" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (model_checks._causal_only, "padding is ignored"),
        (model_checks._causal_upper, "wrong way"),
        (model_checks._padding_on_queries, "applied it to the queries"),
        (model_checks._padding_on_both, "mask only the keys"),
        (lambda m: good_causal_padding_mask(m).float(), "must return a bool tensor"),
    ],
)
def test_causal_padding_mask_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="causal_padding_mask") as err:
        checks.check_causal_padding_mask(wrong)
    assert hint in str(err.value)


def good_cross_attention_mask(src_pad_mask, tgt_len):
    return src_pad_mask.bool()[:, None, :].expand(-1, tgt_len, -1)


def test_cross_attention_mask_passes_a_correct_answer(capsys):
    checks.check_cross_attention_mask(good_cross_attention_mask)
    assert "✔ cross_attention_mask: all 4 cases" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (model_checks._cross_causal, "no causal mask"),
        (model_checks._cross_no_padding, "padding is ignored"),
        (lambda m, t: good_cross_attention_mask(m, t).transpose(1, 2), "transposed"),
        (lambda m, t: m.bool()[:, None, :], "expected shape"),  # not expanded to T rows
    ],
)
def test_cross_attention_mask_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="cross_attention_mask") as err:
        checks.check_cross_attention_mask(wrong)
    assert hint in str(err.value)


def test_mask_references_agree_with_multi_head_attention():
    torch.manual_seed(0)
    pad = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    x = torch.randn(2, 5, 16)
    causal_attn = MultiHeadAttention(16, 4, causal=True)
    plain_attn = MultiHeadAttention(16, 4, causal=False)
    plain_attn.load_state_dict(causal_attn.state_dict())
    expected = causal_attn(x, attn_mask=pad)  # built-in causal mask + key padding mask
    got = plain_attn(x, attn_mask=model_checks.reference_causal_padding_mask(pad))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)

    memory = torch.randn(2, 5, 16)
    target = torch.randn(2, 3, 16)
    expected = plain_attn(target, memory, attn_mask=pad)  # key padding mask of the source
    got = plain_attn(target, memory, attn_mask=model_checks.reference_cross_attention_mask(pad, 3))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------- 01-5: BERT masking


def good_mask_tokens(ids, mask_id, vocab_size, p, generator):
    chosen = torch.rand(ids.shape, generator=generator) < p
    action = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator)
    inputs = ids.clone()
    inputs[chosen & (action < 0.8)] = mask_id
    swap = chosen & (action >= 0.8) & (action < 0.9)
    inputs[swap] = random_ids[swap]
    labels = torch.full_like(ids, -100)
    labels[chosen] = ids[chosen]
    return inputs, labels


def test_mask_tokens_passes_a_correct_answer(capsys):
    checks.check_mask_tokens(good_mask_tokens)
    assert "✔ mask_tokens: inputs and labels match" in capsys.readouterr().out


def _in_place(ids, mask_id, vocab_size, p, generator):
    inputs, labels = good_mask_tokens(ids, mask_id, vocab_size, p, generator)
    ids.copy_(inputs)
    return ids, labels


def _global_rng(ids, mask_id, vocab_size, p, generator):
    return good_mask_tokens(ids, mask_id, vocab_size, p, None)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (model_checks._mask_all_chosen, "80% of them"),
        (model_checks._mask_labels_everywhere, "labels must be -100"),
        (model_checks._mask_random_ids_first, "wrong order"),
        (model_checks._mask_random_then_keep, "not the other way round"),
        (_in_place, "changed ids in place"),
        (_global_rng, None),
        (lambda *args: good_mask_tokens(*args)[0], "pair of tensors"),
    ],
)
def test_mask_tokens_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="mask_tokens") as err:
        checks.check_mask_tokens(wrong)
    if hint:
        assert hint in str(err.value)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), p=st.floats(0.0, 1.0), vocab=st.integers(3, 40))
def test_mask_reference_only_touches_chosen_positions(seed, p, vocab):
    ids = torch.randint(0, vocab - 1, (6, 20), generator=torch.Generator().manual_seed(seed))
    inputs, labels = model_checks.reference_mask_tokens(
        ids, vocab - 1, vocab, p, torch.Generator().manual_seed(seed)
    )
    chosen = labels != IGNORE_INDEX
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])  # untouched where not chosen
    assert inputs.shape == ids.shape and inputs.dtype == ids.dtype


def test_mask_reference_rates_are_15_80_10_10():
    ids = torch.randint(0, 999, (200_000,), generator=torch.Generator().manual_seed(0))
    inputs, labels = model_checks.reference_mask_tokens(ids, 999, 1000, 0.15, torch.Generator().manual_seed(1))
    chosen = labels != IGNORE_INDEX
    n = chosen.sum().item()
    assert abs(n / ids.numel() - 0.15) < 0.005
    masked = (inputs[chosen] == 999).sum().item() / n
    kept = (inputs[chosen] == ids[chosen]).sum().item() / n  # includes random hits of itself
    assert abs(masked - 0.80) < 0.01
    assert abs(kept - (0.10 + 0.10 / 1000)) < 0.01
    assert abs(1 - masked - kept - 0.10) < 0.01
