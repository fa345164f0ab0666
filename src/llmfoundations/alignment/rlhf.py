"""One iteration of RLHF with PPO on a course model: sample, score, then clipped updates.

:mod:`llmfoundations.alignment.ppo` holds the formulas; this module runs them in order,
as TRL's ``PPOTrainer`` does for one batch of prompts (Ouyang et al., 2022; Ziegler et
al., 2019). :func:`ppo_step` does, for prompts ``x`` (B, P):

1. **Rollout** (no gradients): sample a response ``y`` for each prompt from the policy
   (:func:`llmfoundations.generate.generate_output`; a row ends at its stop token, which
   counts as a response token). Score the sampled tokens under the policy (``old_logp``),
   under the frozen reference (``ref_logp``) and with the value model (``old_values``);
   ask the reward function for one ``score`` per finished text.
2. **Rewards and advantages**: per-token KL estimate ``kl = kl_penalty(old_logp,
   ref_logp)``, rewards ``-kl_coef * kl`` plus the score on the last response token
   (:func:`~llmfoundations.alignment.ppo.rlhf_rewards`), GAE advantages and returns,
   advantages whitened over the batch.
3. **Updates**: ``ppo_epochs`` passes over the batch in ``num_minibatches`` shuffled
   minibatches; each minimises ``policy loss + vf_coef * value loss`` (both clipped) with
   one optimizer step, the gradient norm clipped to ``max_grad_norm``. The first
   minibatch of the first epoch sees the policy that sampled the data, so its ratio is 1.

Positions. For a sequence ``x + y`` of length ``P + n``, response token ``y_t`` sits at
position ``P + t`` and is predicted from position ``P + t - 1``: its log-probability and
the value of the state before it are both read at ``P - 1 + t`` (TRL's
``[:, context_length - 1 : -1]``).

The critic is a :class:`ValueModel`: a course ``DecoderLM`` with a linear head ``C -> 1``
on *every* position (the per-token version of
:class:`~llmfoundations.alignment.reward.RewardModel`, which reads only the last real
token). InstructGPT and TRL initialise it from the reward model;
:meth:`ValueModel.from_reward_model` does that.

Left out, by design: prompts of different lengths (all prompts here have length P, no
padding), adaptive KL control, reward whitening, the missing-EOS penalty, value-model
warm-up, several responses per prompt, and gradient accumulation. Dropout must be off
(the course models have none), otherwise ``old_logp`` and the first ratio differ.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from llmfoundations._validate import (
    check_choice,
    check_int,
    check_positive,
    check_probability,
    check_tensor,
)
from llmfoundations.alignment.ppo import (
    KLKind,
    _gae,
    _masked_mean,
    kl_penalty,
    ppo_policy_loss,
    ppo_value_loss,
    rlhf_rewards,
    whiten,
)
from llmfoundations.alignment.reward import RewardModel
from llmfoundations.generate import generate_output
from llmfoundations.models import DecoderLM
from llmfoundations.sampling import SamplingConfig

__all__ = ["PPOConfig", "PPOStats", "ValueModel", "RewardFn", "response_logprobs", "ppo_step"]

RewardFn = Callable[[Tensor, Tensor], Tensor]
"""``reward_fn(sequences, attention_mask) -> scores``: (B, P + n) and (B, P + n) -> (B,).

A :class:`~llmfoundations.alignment.reward.RewardModel` has this signature; so does any
rule, e.g. an exact-match check that decodes ``sequences[:, P:]``."""


@dataclass(frozen=True)
class PPOConfig:
    """Settings of one PPO iteration (defaults: TRL's ``PPOConfig`` where it has them).

    ``max_new_tokens`` response length limit; ``temperature`` of sampling (the
    log-probabilities are taken at the same temperature, as TRL does); ``stop_token_id``
    ends a response (``None``: every response has ``max_new_tokens`` tokens) and
    ``pad_token_id`` fills after it; ``kl_coef`` 0.05, ``kl_kind`` "k1", ``gamma`` 1,
    ``lam`` 0.95, ``clip_range`` 0.2, ``clip_range_value`` 0.2, ``vf_coef`` 0.1;
    ``ppo_epochs`` passes over the batch (TRL's ``num_ppo_epochs`` 4) in
    ``num_minibatches`` minibatches (TRL 1); ``max_grad_norm`` 1.0 (``None``: no clipping).
    """

    max_new_tokens: int = 8
    temperature: float = 1.0
    stop_token_id: int | None = None
    pad_token_id: int = 0
    kl_coef: float = 0.05
    kl_kind: KLKind = "k1"
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    ppo_epochs: int = 4
    num_minibatches: int = 1
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        check_positive("temperature", self.temperature)
        if self.stop_token_id is not None:
            check_int("stop_token_id", self.stop_token_id, minimum=0)
        check_int("pad_token_id", self.pad_token_id, minimum=0)
        check_positive("kl_coef", self.kl_coef, allow_zero=True)
        check_choice("kl_kind", self.kl_kind, ("k1", "k2", "k3"))
        check_probability("gamma", self.gamma, low_open=False)
        check_probability("lam", self.lam, low_open=False)
        check_positive("clip_range", self.clip_range)
        check_positive("clip_range_value", self.clip_range_value)
        check_positive("vf_coef", self.vf_coef, allow_zero=True)
        check_int("ppo_epochs", self.ppo_epochs, minimum=1)
        check_int("num_minibatches", self.num_minibatches, minimum=1)
        if self.max_grad_norm is not None:
            check_positive("max_grad_norm", self.max_grad_norm)


@dataclass(frozen=True)
class PPOStats:
    """What one :func:`ppo_step` measured (plain floats; the update means are over every
    minibatch of every epoch).

    - ``score``: mean reward-function score of the sampled responses;
    - ``kl``: mean over the batch of the *summed* per-token KL estimate of each response
      to the reference (TRL's ``objective/kl``), at sampling time;
    - ``reward``: mean summed per-token reward (score minus ``kl_coef`` times KL);
    - ``entropy``: mean per-token entropy of the policy at sampling time (nats);
    - ``response_length``: mean number of response tokens;
    - ``policy_loss``, ``value_loss``, ``clip_fraction``, ``value_clip_fraction``: the
      clipped losses and how often their clip was active;
    - ``approx_kl``: mean of ``0.5 (log rho)^2`` between the updated and the sampling
      policy over the updates (TRL's ``policy/approxkl``);
    - ``first_ratio_max_dev``: ``max |rho - 1|`` on the first minibatch of the first epoch,
      where the policy has not moved yet (0 up to rounding).
    """

    score: float
    kl: float
    reward: float
    entropy: float
    response_length: float
    policy_loss: float
    value_loss: float
    clip_fraction: float
    value_clip_fraction: float
    approx_kl: float
    first_ratio_max_dev: float


class ValueModel(nn.Module):
    """A ``DecoderLM`` with a linear head on every position: values (B, T).

    ``values[:, t]`` estimates the return after having read tokens ``0..t``. The head
    ``nn.Linear(C, 1, bias=True)`` starts at zero (every value 0); unlike a reward model's
    head it keeps its bias, since returns have a scale with a zero. The backbone's
    language-model logits are computed and ignored.
    """

    def __init__(self, backbone: DecoderLM) -> None:
        super().__init__()
        if not isinstance(backbone, DecoderLM):
            raise TypeError(f"backbone must be a DecoderLM, got {type(backbone).__name__}")
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.d_model, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_reward_model(cls, reward_model: RewardModel) -> ValueModel:
        """A critic initialised from a (deep copy of a) reward model: same backbone, and
        the reward head's weight as the value head's weight (bias 0)."""
        if not isinstance(reward_model, RewardModel):
            raise TypeError(f"reward_model must be a RewardModel, got {type(reward_model).__name__}")
        model = cls(copy.deepcopy(reward_model.backbone))
        with torch.no_grad():
            model.head.weight.copy_(reward_model.head.weight)
        return model

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Values (B, T) for ``input_ids`` (B, T)."""
        hidden = self.backbone(input_ids, attention_mask=attention_mask).hidden_states  # (B, T, C)
        return self.head(hidden).squeeze(-1)  # (B, T)


def response_logprobs(logits: Tensor, sequences: Tensor, prompt_length: int) -> tuple[Tensor, Tensor]:
    """Log-probabilities (B, n) of the response tokens ``sequences[:, P:]`` and the
    per-token entropies (B, n) of the distributions they were drawn from.

    ``logits`` (B, P + n, V) from a forward pass over ``sequences`` (B, P + n); already
    divided by any sampling temperature. Position ``P - 1 + t`` predicts token ``P + t``.
    """
    logp_all = logits[:, prompt_length - 1 : -1].float().log_softmax(dim=-1)  # (B, n, V)
    targets = sequences[:, prompt_length:]  # (B, n)
    logp = logp_all.gather(-1, targets[..., None]).squeeze(-1)  # (B, n)
    entropy = -(logp_all.exp() * logp_all).sum(dim=-1)  # (B, n)
    return logp, entropy


def _check_args(
    policy: object, value_model: object, ref_model: object, reward_fn: object, prompts: object,
    config: object, optimizer: object,
) -> None:  # fmt: skip
    for name, model in (("policy", policy), ("value_model", value_model), ("ref_model", ref_model)):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(model).__name__}")
    if ref_model is policy:
        raise ValueError("ref_model is the policy itself: pass a frozen copy (copy.deepcopy(policy))")
    if value_model is policy:
        raise ValueError("value_model is the policy itself: the critic must be a separate model")
    if not callable(reward_fn):
        raise TypeError(f"reward_fn must be callable (sequences, attention_mask) -> (B,), got "
                        f"{type(reward_fn).__name__}")  # fmt: skip
    if not isinstance(config, PPOConfig):
        raise TypeError(f"config must be a PPOConfig, got {type(config).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    check_tensor("prompts", prompts, ndim=2, nonempty=True)
    assert isinstance(prompts, Tensor)
    if prompts.is_floating_point() or prompts.dtype == torch.bool:
        raise TypeError(f"prompts must hold token ids (an integer tensor), got dtype {prompts.dtype}")
    b = prompts.shape[0]
    if b < config.num_minibatches:
        raise ValueError(f"prompts: {b} rows cannot fill num_minibatches={config.num_minibatches}")


def ppo_step(
    policy: nn.Module,
    value_model: nn.Module,
    ref_model: nn.Module,
    reward_fn: RewardFn,
    prompts: Tensor,
    config: PPOConfig,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator | None = None,
) -> PPOStats:
    """Run one PPO iteration on ``prompts`` (B, P) and return its :class:`PPOStats`.

    ``policy`` is updated; ``value_model`` (e.g. a :class:`ValueModel`) is updated too
    when its parameters are in ``optimizer`` (one optimizer over both, as TRL's
    ``PolicyAndValueWrapper``); ``ref_model`` is never updated (eval mode, no gradients).
    ``reward_fn(sequences, attention_mask)`` -> (B,) scores the finished texts under
    ``torch.no_grad``. ``generator`` seeds the sampling and the minibatch shuffles
    (on the policy's device).
    """
    _check_args(policy, value_model, ref_model, reward_fn, prompts, config, optimizer)
    prompt_length = prompts.shape[1]
    sampling = SamplingConfig(temperature=config.temperature)
    ref_model.eval()

    # 1. Rollout: sample, then score everything without gradients.
    with torch.no_grad():
        out = generate_output(
            policy, prompts, config.max_new_tokens, sampling=sampling,
            stop_token_ids=() if config.stop_token_id is None else config.stop_token_id,
            pad_token_id=config.pad_token_id, generator=generator,
        )  # fmt: skip
        seqs = out.sequences  # (B, P + n)
        n = seqs.shape[1] - prompt_length
        mask = torch.arange(n, device=seqs.device)[None] < out.num_new_tokens[:, None]  # (B, n)
        old_logp, entropy = response_logprobs(policy(seqs).logits / config.temperature, seqs, prompt_length)
        ref_logp, _ = response_logprobs(ref_model(seqs).logits / config.temperature, seqs, prompt_length)
        old_values = value_model(seqs)[:, prompt_length - 1 : -1].float()  # (B, n)
        score = reward_fn(seqs, out.attention_mask)
        if not isinstance(score, Tensor) or score.shape != (seqs.shape[0],):
            shape = tuple(score.shape) if isinstance(score, Tensor) else type(score).__name__
            raise ValueError(f"reward_fn must return one score per row, shape ({seqs.shape[0]},), got {shape}")
        score = score.float().to(seqs.device)

        # 2. Per-token rewards, GAE, whitened advantages.
        kl = torch.where(mask, kl_penalty(old_logp, ref_logp, config.kl_kind), 0.0)  # (B, n)
        rewards = rlhf_rewards(score, kl, mask, config.kl_coef)  # (B, n)
        advantages, returns = _gae(rewards, old_values, mask, config.gamma, config.lam)
        advantages = whiten(advantages, mask) if int(mask.sum()) >= 2 else advantages

    # 3. Clipped updates over shuffled minibatches.
    b = seqs.shape[0]
    sums = {"policy_loss": 0.0, "value_loss": 0.0, "clip_fraction": 0.0, "value_clip_fraction": 0.0,
            "approx_kl": 0.0}  # fmt: skip
    first_dev = float("nan")
    updates = 0
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for _ in range(config.ppo_epochs):
        order = torch.randperm(b, generator=generator, device=seqs.device)
        for idx in order.chunk(config.num_minibatches):
            logits = policy(seqs[idx]).logits / config.temperature
            logp, _ = response_logprobs(logits, seqs[idx], prompt_length)  # (b, n)
            values = value_model(seqs[idx])[:, prompt_length - 1 : -1].float()  # (b, n)
            pg = ppo_policy_loss(logp, old_logp[idx], advantages[idx], mask[idx], config.clip_range)
            vf = ppo_value_loss(values, old_values[idx], returns[idx], mask[idx], config.clip_range_value)
            loss = pg.loss + config.vf_coef * vf.loss
            optimizer.zero_grad()
            loss.backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            with torch.no_grad():
                log_ratio = torch.where(mask[idx], logp - old_logp[idx], 0.0)
                if updates == 0:
                    first_dev = float(log_ratio.exp().sub(1).abs().max())
                sums["approx_kl"] += float(_masked_mean(0.5 * log_ratio**2, mask[idx]))
            sums["policy_loss"] += float(pg.loss.detach())
            sums["value_loss"] += float(vf.loss.detach())
            sums["clip_fraction"] += float(pg.clip_fraction)
            sums["value_clip_fraction"] += float(vf.clip_fraction)
            updates += 1

    means = {k: v / updates for k, v in sums.items()}
    return PPOStats(
        score=float(score.mean()),
        kl=float(kl.sum(dim=1).mean()),
        reward=float(rewards.sum(dim=1).mean()),
        entropy=float(_masked_mean(entropy, mask)),
        response_length=float(mask.sum(dim=1).float().mean()),
        first_ratio_max_dev=first_dev,
        **means,
    )
