"""Tests of alignment/dpo.py: the DPO, IPO and hinge losses, implicit rewards, pair batches.

Oracles: the closed forms on exact cases, TRL's ``DPOTrainer._compute_loss`` (called on
tensors with a stub trainer, and a one-step ``DPOTrainer`` run on a tiny transformers
Llama, both slow for TRL's import time), and autograd for the gradient.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.alignment.dpo import DPOOutput, collate_pairs, dpo_loss, pair_logprobs
from llmfoundations.alignment.logprobs import IGNORE_INDEX, sequence_logprobs
from llmfoundations.models import DecoderLM, ModelConfig

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def _four(seed: int = 0, b: int = 5, scale: float = 4.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(b, generator=g) * scale) - 0.1 for _ in range(4)]


# ------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 5.0])
def test_policy_equal_to_reference_gives_ln2_and_zero_rewards(beta):
    logps = _four(seed=1)
    out = dpo_loss(logps[0], logps[1], logps[0].clone(), logps[1].clone(), beta=beta)
    assert isinstance(out, DPOOutput)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert torch.equal(out.chosen_rewards, torch.zeros(5))
    assert torch.equal(out.margins, torch.zeros(5))
    assert out.reward_accuracy.item() == 0.0  # ties do not count as right


def test_exact_case_by_hand():
    # pair 1: h = (-1 - -2) - (-3 - -2) = 2;  pair 2: h = (-4 - -2) - (-1 - -1) = -2
    pc, pr = torch.tensor([-1.0, -4.0]), torch.tensor([-3.0, -1.0])
    rc, rr = torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -1.0])
    beta = 0.5
    out = dpo_loss(pc, pr, rc, rr, beta=beta)
    expected = [math.log1p(math.exp(-1.0)), math.log1p(math.exp(1.0))]  # -log sigmoid(+-1)
    torch.testing.assert_close(out.losses, torch.tensor(expected), rtol=0, atol=1e-6)
    assert out.loss.item() == pytest.approx(sum(expected) / 2, abs=1e-6)
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.5, 0.0]))
    torch.testing.assert_close(out.margins, torch.tensor([1.0, -1.0]))
    assert out.reward_accuracy.item() == 0.5
    ipo = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo")  # target 1 / (2 beta) = 1
    torch.testing.assert_close(ipo.losses, torch.tensor([1.0, 9.0]))
    hinge = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="hinge")  # relu(1 - beta h)
    torch.testing.assert_close(hinge.losses, torch.tensor([0.0, 2.0]))
    torch.testing.assert_close(hinge.margins, out.margins)  # rewards do not depend on the loss


def test_swapping_chosen_and_rejected_flips_the_margin():
    pc, pr, rc, rr = _four(seed=2)
    out = dpo_loss(pc, pr, rc, rr, beta=0.3)
    swapped = dpo_loss(pr, pc, rr, rc, beta=0.3)
    torch.testing.assert_close(swapped.margins, -out.margins)
    # -log sigmoid(x) - -log sigmoid(-x) = -x
    torch.testing.assert_close(out.losses - swapped.losses, -out.margins, rtol=0, atol=1e-6)


def test_only_log_ratios_matter():
    pc, pr, rc, rr = _four(seed=3)
    shift = torch.randn(5)
    for loss_type in LOSS_TYPES:
        a = dpo_loss(pc, pr, rc, rr, loss_type=loss_type)
        b = dpo_loss(pc + shift, pr, rc + shift, rr, loss_type=loss_type)
        torch.testing.assert_close(a.losses, b.losses, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------ gradient


def test_gradient_equals_the_closed_form():
    """dL/dtheta = -(beta / B) sum_i sigmoid(-beta h_i) (grad log pi(y_w) - grad log pi(y_l))."""
    torch.manual_seed(0)
    b, d, beta = 4, 6, 0.7
    theta = torch.randn(d, requires_grad=True)
    feats_c, feats_r = torch.randn(b, d), torch.randn(b, d)

    def logps(feats: torch.Tensor) -> torch.Tensor:  # a toy policy: log pi = -softplus(f . theta)
        return -torch.nn.functional.softplus(feats @ theta)

    ref_c, ref_r = logps(feats_c).detach() + 0.3, logps(feats_r).detach() - 0.2
    out = dpo_loss(logps(feats_c), logps(feats_r), ref_c, ref_r, beta=beta)
    (grad,) = torch.autograd.grad(out.loss, theta)

    h = (out.margins / beta).detach()
    expected = torch.zeros(d)
    for i in range(b):
        (g_c,) = torch.autograd.grad(logps(feats_c[i : i + 1])[0], theta)
        (g_r,) = torch.autograd.grad(logps(feats_r[i : i + 1])[0], theta)
        expected += -beta * torch.sigmoid(-beta * h[i]) * (g_c - g_r) / b
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)


def test_gradient_at_the_start_is_half_beta_and_rewards_carry_none():
    pc, pr = torch.tensor([-2.0, -1.0], requires_grad=True), torch.tensor([-3.0, -1.5], requires_grad=True)
    out = dpo_loss(pc, pr, pc.detach().clone(), pr.detach().clone(), beta=0.2)
    out.loss.backward()
    torch.testing.assert_close(pc.grad, torch.full((2,), -0.2 / 2 / 2))  # -(beta / 2) / B
    torch.testing.assert_close(pr.grad, torch.full((2,), 0.2 / 2 / 2))
    assert not out.chosen_rewards.requires_grad and not out.margins.requires_grad


# ------------------------------------------------------------------------ properties


@settings(max_examples=60, deadline=None)
@given(
    h=st.floats(-30, 30),
    step=st.floats(0.01, 10),
    beta=st.floats(0.01, 5),
)
def test_loss_falls_as_the_margin_grows(h, step, beta):
    def loss(value: float, loss_type: str) -> float:
        pc = torch.tensor([value], dtype=torch.float64)
        zero = torch.zeros(1, dtype=torch.float64)
        return dpo_loss(pc, zero, zero, zero, beta=beta, loss_type=loss_type).loss.item()

    assert loss(h + step, "sigmoid") < loss(h, "sigmoid") or loss(h, "sigmoid") == 0.0
    assert loss(h + step, "hinge") <= loss(h, "hinge")
    target = 1 / (2 * beta)
    if h + step <= target:  # IPO falls up to its target, then rises again
        assert loss(h + step, "ipo") < loss(h, "ipo")
    if h >= target:
        assert loss(h + step, "ipo") > loss(h, "ipo")


def test_no_nan_for_extreme_log_probs():
    big = torch.tensor([-1e4, 0.0])
    out = dpo_loss(big, -big - 1e4, torch.zeros(2), torch.zeros(2), beta=1.0)
    assert torch.isfinite(out.losses).all()


# ------------------------------------------------------------------------ pair batches


def test_collate_pairs_layout_and_pair_logprobs_score_only_the_answers():
    batch = collate_pairs([[1, 2, 3], [4]], [[5], [6, 7, 8]], [[9, 9], [10]], pad_id=0)
    assert batch.n_pairs == 2
    assert batch.input_ids.tolist() == [
        [1, 2, 3, 5, 0], [4, 6, 7, 8, 0], [1, 2, 3, 9, 9], [4, 10, 0, 0, 0]
    ]  # fmt: skip
    ig = IGNORE_INDEX
    assert batch.labels.tolist() == [
        [ig, ig, ig, 5, ig], [ig, 6, 7, 8, ig], [ig, ig, ig, 9, 9], [ig, 10, ig, ig, ig]
    ]  # fmt: skip
    assert batch.attention_mask.sum(1).tolist() == [4, 4, 5, 2]

    torch.manual_seed(0)
    model = DecoderLM(ModelConfig.llama(11, d_model=16, n_layers=1, n_heads=2))
    logits = model(batch.input_ids).logits  # (2B, T, V)
    chosen, rejected = pair_logprobs(logits, batch.labels)
    # each answer scored alone, without the other rows or the padding
    for i, (p, c, r) in enumerate([([1, 2, 3], [5], [9, 9]), ([4], [6, 7, 8], [10])]):
        for got, answer in ((chosen[i], c), (rejected[i], r)):
            ids = torch.tensor([p + answer])
            labels = torch.tensor([[IGNORE_INDEX] * len(p) + answer])
            alone = sequence_logprobs(model(ids).logits, labels)[0]
            assert got.item() == pytest.approx(alone.item(), abs=1e-5)
    mean_c, _ = pair_logprobs(logits, batch.labels, reduce="mean")
    torch.testing.assert_close(mean_c, chosen / torch.tensor([1.0, 3.0]))


# ------------------------------------------------------------------------ bad inputs


def test_bad_inputs():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="beta must be > 0, got 0"):
        dpo_loss(x, x, x, x, beta=0)
    with pytest.raises(ValueError, match="beta must be > 0, got -0.1"):
        dpo_loss(x, x, x, x, beta=-0.1)
    with pytest.raises(ValueError, match="beta must be finite"):
        dpo_loss(x, x, x, x, beta=float("inf"))
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(x, torch.zeros(2), x, x)
    with pytest.raises(ValueError, match="ref_rejected must have 1 dimensions"):
        dpo_loss(x, x, x, torch.zeros(3, 1))
    with pytest.raises(ValueError, match="policy_chosen must not be empty"):
        e = torch.zeros(0)
        dpo_loss(e, e, e, e)
    with pytest.raises(TypeError, match="policy_rejected must be a floating-point"):
        dpo_loss(x, torch.zeros(3, dtype=torch.long), x, x)
    with pytest.raises(TypeError, match="share one dtype"):
        dpo_loss(x, x, x, x.double())
    with pytest.raises(TypeError, match="ref_chosen must be a torch.Tensor"):
        dpo_loss(x, x, [0.0, 0.0, 0.0], x)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        dpo_loss(x, x, x, x, loss_type="robust")
    with pytest.raises(ValueError, match="one length B"):
        collate_pairs([[1]], [[2]], [[3], [4]], pad_id=0)
    with pytest.raises(ValueError, match="prompts must not be empty"):
        collate_pairs([], [], [], pad_id=0)
    with pytest.raises(ValueError, match=r"chosen\[0\] must not be empty"):
        collate_pairs([[1]], [[]], [[3]], pad_id=0)
    with pytest.raises(ValueError, match=r"rejected\[0\] must hold token ids"):
        collate_pairs([[1]], [[2]], [[-1]], pad_id=0)
    with pytest.raises(TypeError, match="prompts must be a list"):
        collate_pairs("12", [[2]], [[3]], pad_id=0)
    with pytest.raises(ValueError, match="2B rows"):
        pair_logprobs(torch.zeros(3, 4, 5), torch.zeros(3, 4, dtype=torch.long))


# ------------------------------------------------------------------------ TRL


def _trl_loss(loss_type, beta, per_token, completion_mask, ref_chosen, ref_rejected):
    """TRL's ``DPOTrainer._compute_loss`` on given per-token log-probs, with a stub trainer.

    The stub model returns ``per_token`` (2B, T-1) as TRL's fused head would (0 off the
    completion); the reference log-probs come in the batch, as with
    ``precompute_ref_log_probs=True``. Returns the loss and TRL's logged metrics.
    """
    from trl.trainer.dpo_trainer import DPOTrainer

    rows, t = completion_mask.shape

    def model(**kwargs):
        zeros = torch.zeros(rows, t - 1)
        return SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros,
                               is_top1=zeros.bool())  # fmt: skip

    model.training = True
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x,
                                  gather_for_metrics=lambda x: x)  # fmt: skip
    trainer = SimpleNamespace(
        model=model, accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type],
        loss_weights=[1.0], beta=beta, label_smoothing=0.0, use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    inputs = {
        "input_ids": torch.zeros(rows, t, dtype=torch.long),
        "attention_mask": torch.ones(rows, t, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    loss = DPOTrainer._compute_loss(trainer, model, inputs, False)
    return loss, {k: v[0] for k, v in trainer._metrics["train"].items()}


@pytest.mark.slow  # importing trl takes several seconds
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_equals_trl_compute_loss_on_random_tensors(loss_type, beta):
    pytest.importorskip("trl")
    g = torch.Generator().manual_seed(7)
    b, t = 4, 9
    completion_mask = torch.zeros(2 * b, t, dtype=torch.long)  # prompts of 3 tokens
    lengths = torch.tensor([6, 2, 4, 1, 3, 5, 6, 2])  # answers of different lengths
    for row, n in enumerate(lengths.tolist()):
        completion_mask[row, 3 : 3 + n] = 1
    per_token = -torch.rand(2 * b, t - 1, generator=g) * 3 * completion_mask[:, 1:]  # (2B, T-1)
    ref = -torch.rand(2 * b, generator=g) * 10  # sums under the reference
    ref_mean = ref / lengths

    sums = per_token.sum(1)
    policy = sums if loss_type != "ipo" else sums / lengths  # TRL's IPO averages per token
    reference = ref if loss_type != "ipo" else ref_mean
    ours = dpo_loss(policy[:b], policy[b:], reference[:b], reference[b:], beta=beta, loss_type=loss_type)
    trl_loss, logged = _trl_loss(loss_type, beta, per_token, completion_mask, ref[:b], ref[b:])
    assert ours.loss.item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-6)

    summed = dpo_loss(sums[:b], sums[b:], ref[:b], ref[b:], beta=beta)  # TRL logs sum-based rewards
    assert logged["rewards/chosen"] == pytest.approx(summed.chosen_rewards.mean().item(), abs=1e-5)
    assert logged["rewards/rejected"] == pytest.approx(summed.rejected_rewards.mean().item(), abs=1e-5)
    assert logged["rewards/margins"] == pytest.approx(summed.margins.mean().item(), abs=1e-5)
    assert logged["rewards/accuracies"] == pytest.approx(summed.reward_accuracy.item())


@pytest.mark.slow  # imports trl and runs one optimizer step of its trainer
def test_equals_a_one_step_trl_run_on_a_tiny_llama(tmp_path):
    """Our batch, log-probs and loss reproduce what DPOTrainer logs at its first step."""
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from trl import DPOConfig, DPOTrainer

    words = ["<pad>", "<eos>", "<unk>"] + [str(i) for i in range(10)] + ["+", "="]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    rows = {"prompt": ["1 + 2 =", "3 + 4 + 5 =", "9 + 0 ="],
            "chosen": [" 3", " 1 2", " 9"], "rejected": [" 4 1", " 1 1", " 0"]}  # fmt: skip
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, eos_token_id=1,
        bos_token_id=None,
    )  # fmt: skip
    policy = transformers.LlamaForCausalLM(config)
    reference = transformers.LlamaForCausalLM(config)  # another random model: loss != ln 2
    for m in (policy, reference):
        m.eval()
    beta = 0.3
    args = DPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=3, max_steps=1, logging_steps=1,
        learning_rate=1e-3, beta=beta, report_to=[], save_strategy="no", use_cpu=True,
        dataloader_num_workers=0, bf16=False,  # TRL defaults to bf16 autocast, which moves logps by 1e-3
    )  # fmt: skip
    trainer = DPOTrainer(
        model=copy.deepcopy(policy), ref_model=reference, args=args, processing_class=tokenizer,
        train_dataset=datasets.Dataset.from_dict(rows),
    )  # fmt: skip
    trainer.train()
    logged = next(entry for entry in trainer.state.log_history if "rewards/margins" in entry)

    data = trainer.train_dataset
    batch = collate_pairs(data["prompt_ids"], data["chosen_ids"], data["rejected_ids"], pad_id=0)
    with torch.no_grad():
        pol = pair_logprobs(policy(batch.input_ids).logits, batch.labels)
        ref = pair_logprobs(reference(batch.input_ids).logits, batch.labels)
    ours = dpo_loss(*pol, *ref, beta=beta)
    assert abs(ours.loss.item() - math.log(2)) > 1e-3  # a case where the reference matters
    assert logged["loss"] == pytest.approx(ours.loss.item(), abs=1e-5)
    assert logged["rewards/margins"] == pytest.approx(ours.margins.mean().item(), abs=1e-5)
    assert logged["rewards/chosen"] == pytest.approx(ours.chosen_rewards.mean().item(), abs=1e-5)
    assert logged["rewards/accuracies"] == pytest.approx(ours.reward_accuracy.item())
    assert logged["logps/chosen"] == pytest.approx(pol[0].mean().item(), abs=1e-4)
    assert logged["logps/rejected"] == pytest.approx(pol[1].mean().item(), abs=1e-4)
