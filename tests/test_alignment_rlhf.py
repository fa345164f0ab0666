"""Tests of alignment/rlhf.py: one PPO iteration on a tiny course model.

Oracles: ``alignment.logprobs.token_logprobs`` for the response log-probabilities, a
naive per-row loop for the per-token RLHF rewards, exact probabilities of a tiny model
for "the expected reward goes up", and invariants (KL 0 and ratio 1 while nothing has
moved, the reference never changes, same seed -> same run).
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.alignment.logprobs import IGNORE_INDEX, token_logprobs
from llmfoundations.alignment.ppo import rlhf_rewards
from llmfoundations.alignment.reward import RewardModel
from llmfoundations.alignment.rlhf import (
    PPOConfig,
    PPOStats,
    ValueModel,
    ppo_step,
    response_logprobs,
)
from llmfoundations.models import DecoderLM, ModelConfig

V, P = 6, 3
TARGET = 3  # the toy reward: 1 when the first response token is TARGET


def _models(seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig.llama(vocab_size=V, d_model=32, n_layers=1, n_heads=2)
    policy = DecoderLM(cfg)
    return policy, ValueModel(DecoderLM(cfg)), copy.deepcopy(policy)


def _toy_reward(seqs, attention_mask):
    return (seqs[:, P] == TARGET).float()


def _prompts(seed: int = 0, b: int = 16):
    return torch.randint(0, V, (b, P), generator=torch.Generator().manual_seed(seed))


def _run(steps: int = 1, seed: int = 0, **kw):
    policy, value, ref = _models(seed)
    opt = torch.optim.AdamW([*policy.parameters(), *value.parameters()], lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    config = PPOConfig(max_new_tokens=3, num_minibatches=2, **kw)
    stats = [ppo_step(policy, value, ref, _toy_reward, _prompts(seed), config, opt, g) for _ in range(steps)]
    return policy, value, ref, stats


def _expected_reward(policy) -> float:
    with torch.no_grad():
        return float(policy(_prompts()).logits[:, -1].softmax(-1)[:, TARGET].mean())


def test_stats_are_finite_and_in_range():
    _, _, _, (s,) = _run()
    assert isinstance(s, PPOStats)
    for name, value in vars(s).items():
        assert isinstance(value, float) and value == value, name  # a float, not NaN
    assert s.response_length == 3.0  # no stop token: every response is max_new_tokens long
    assert 0.0 <= s.score <= 1.0
    assert 0.0 <= s.clip_fraction <= 1.0 and 0.0 <= s.value_clip_fraction <= 1.0
    assert 0.0 < s.entropy <= torch.log(torch.tensor(float(V))).item() + 1e-5
    assert s.value_loss > 0 and s.approx_kl >= 0


def test_first_step_kl_is_zero_and_first_ratio_is_one():
    _, _, _, (s,) = _run()
    assert s.kl == 0.0  # the reference is a copy of the policy: log-probs bit-equal
    assert s.reward == pytest.approx(s.score)
    assert s.first_ratio_max_dev < 1e-5  # old == new on the first minibatch


def test_reward_stat_is_score_minus_kl_coef_times_kl():
    _, _, _, stats = _run(steps=3, kl_coef=0.3)
    s = stats[-1]
    assert s.kl != 0.0  # the policy moved away from the reference
    assert s.reward == pytest.approx(s.score - 0.3 * s.kl, abs=1e-5)


def test_ppo_raises_the_expected_toy_reward_and_leaves_the_reference_alone():
    policy, value, ref = _models()
    before = _expected_reward(policy)
    ref_state = copy.deepcopy(ref.state_dict())
    opt = torch.optim.AdamW([*policy.parameters(), *value.parameters()], lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        ppo_step(policy, value, ref, _toy_reward, _prompts(), PPOConfig(max_new_tokens=3, num_minibatches=2), opt, g)
    after = _expected_reward(policy)
    assert after > before + 0.1, (before, after)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    assert any(not torch.equal(v, ref_state[k]) for k, v in policy.state_dict().items())


def test_same_seed_same_run():
    assert _run(steps=2)[3] == _run(steps=2)[3]


def test_value_model_outside_the_optimizer_is_not_updated():
    policy, value, ref = _models()
    state = copy.deepcopy(value.state_dict())
    opt = torch.optim.SGD(policy.parameters(), lr=0.1)
    ppo_step(policy, value, ref, _toy_reward, _prompts(), PPOConfig(max_new_tokens=2), opt)
    assert all(torch.equal(v, state[k]) for k, v in value.state_dict().items())


def test_stop_token_ends_responses():
    policy, value, ref = _models()
    opt = torch.optim.SGD([*policy.parameters(), *value.parameters()], lr=0.0)
    config = PPOConfig(max_new_tokens=6, stop_token_id=TARGET, pad_token_id=0)
    s = ppo_step(policy, value, ref, _toy_reward, _prompts(b=32), config, opt, torch.Generator().manual_seed(1))
    assert 1.0 <= s.response_length < 6.0  # some rows stopped early (at TARGET, p ~ 1/6 per token)


def test_response_logprobs_match_token_logprobs():
    policy, _, _ = _models()
    seqs = torch.randint(0, V, (4, P + 5), generator=torch.Generator().manual_seed(2))
    logits = policy(seqs).logits
    logp, entropy = response_logprobs(logits, seqs, P)
    labels = seqs.clone()
    labels[:, :P] = IGNORE_INDEX
    ref, mask = token_logprobs(logits, labels)  # (B, T - 1), scored from position P - 1
    torch.testing.assert_close(logp, ref[:, P - 1 :], atol=1e-6, rtol=1e-6)
    assert bool(mask[:, P - 1 :].all())
    dist = torch.distributions.Categorical(logits=logits[:, P - 1 : -1].float())
    torch.testing.assert_close(entropy, dist.entropy(), atol=1e-5, rtol=1e-5)


def test_value_model_shapes_zero_init_and_from_reward_model():
    cfg = ModelConfig.llama(vocab_size=V, d_model=16, n_layers=1, n_heads=2)
    ids = torch.randint(0, V, (3, 7))
    value = ValueModel(DecoderLM(cfg))
    assert torch.equal(value(ids), torch.zeros(3, 7))
    rm = RewardModel(DecoderLM(cfg))
    torch.nn.init.normal_(rm.head.weight)
    critic = ValueModel.from_reward_model(rm)
    assert critic.backbone is not rm.backbone  # a copy, trained separately
    # the critic's value at the last token is the reward model's reward
    torch.testing.assert_close(critic(ids)[:, -1], rm(ids), atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="backbone"):
        ValueModel(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="reward_model"):
        ValueModel.from_reward_model(value)


@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    kl_coef=st.floats(0.0, 1.0),
    seed=st.integers(0, 1000),
)
def test_rlhf_rewards_match_a_naive_loop(lengths, kl_coef, seed):
    g = torch.Generator().manual_seed(seed)
    b, t = len(lengths), max(lengths)
    kl = torch.randn(b, t, generator=g, dtype=torch.float64)
    score = torch.randn(b, generator=g, dtype=torch.float64)
    mask = torch.tensor([[i < n for i in range(t)] for n in lengths])
    expected = torch.zeros(b, t, dtype=torch.float64)
    for row, n in enumerate(lengths):
        for i in range(n):
            expected[row, i] = -kl_coef * kl[row, i].item()
            if i == n - 1:
                expected[row, i] += score[row].item()
    torch.testing.assert_close(rlhf_rewards(score, kl, mask, kl_coef), expected, atol=1e-12, rtol=0)


def test_bad_arguments():
    policy, value, ref = _models()
    opt = torch.optim.SGD(policy.parameters(), lr=0.1)
    prompts, config = _prompts(), PPOConfig(max_new_tokens=2)
    with pytest.raises(ValueError, match="ref_model"):
        ppo_step(policy, value, policy, _toy_reward, prompts, config, opt)
    with pytest.raises(ValueError, match="value_model"):
        ppo_step(policy, policy, ref, _toy_reward, prompts, config, opt)
    with pytest.raises(TypeError, match="config"):
        ppo_step(policy, value, ref, _toy_reward, prompts, {"kl_coef": 0.05}, opt)
    with pytest.raises(TypeError, match="optimizer"):
        ppo_step(policy, value, ref, _toy_reward, prompts, config, None)
    with pytest.raises(TypeError, match="reward_fn"):
        ppo_step(policy, value, ref, 1.0, prompts, config, opt)
    with pytest.raises(TypeError, match="prompts"):
        ppo_step(policy, value, ref, _toy_reward, prompts.float(), config, opt)
    with pytest.raises(ValueError, match="prompts"):
        ppo_step(policy, value, ref, _toy_reward, prompts[0], config, opt)
    with pytest.raises(ValueError, match="num_minibatches"):
        ppo_step(policy, value, ref, _toy_reward, prompts[:2], PPOConfig(num_minibatches=4), opt)
    with pytest.raises(ValueError, match="one score per row"):
        ppo_step(policy, value, ref, lambda s, m: torch.zeros(3), prompts, config, opt)
    with pytest.raises(TypeError, match="policy"):
        ppo_step("model", value, ref, _toy_reward, prompts, config, opt)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"kl_coef": -0.1}, ValueError, "kl_coef"),
        ({"kl_kind": "k4"}, ValueError, "kl_kind"),
        ({"gamma": 1.5}, ValueError, "gamma"),
        ({"lam": -0.1}, ValueError, "lam"),
        ({"clip_range": 0.0}, ValueError, "clip_range"),
        ({"vf_coef": -1.0}, ValueError, "vf_coef"),
        ({"ppo_epochs": 0}, ValueError, "ppo_epochs"),
        ({"num_minibatches": 1.5}, TypeError, "num_minibatches"),
        ({"max_grad_norm": 0.0}, ValueError, "max_grad_norm"),
        ({"stop_token_id": -1}, ValueError, "stop_token_id"),
    ],
)
def test_config_rejects_bad_values(kwargs, error, match):
    with pytest.raises(error, match=match):
        PPOConfig(**kwargs)
