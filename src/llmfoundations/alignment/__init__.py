"""Chapter 3, part 2: alignment — teaching a model to prefer some answers over others.

One concept per module:

- ``logprobs``: the log-probability a model gives a response after its prompt, per
  token and per sequence (the quantity every preference method optimises).
- ``reward``: a scalar reward head on a course model, the Bradley–Terry loss on
  preference pairs, pairwise accuracy.
- ``ppo``: RLHF with proximal policy optimisation: KL penalties, GAE, the clipped losses.
- ``rlhf``: one PPO iteration on a course model (sample, score, KL-penalised rewards,
  GAE, clipped minibatch updates) and a per-token value model.
- ``dpo``: direct preference optimisation (Rafailov et al., 2023) and its IPO / hinge
  variants: the preferences without a reward model.
- ``grpo``: group-relative policy optimisation (Shao et al., 2024; DeepSeek-R1): sampled
  groups, group-relative advantages, and the loss aggregations that differ in length bias.
- ``rlaif``: preference labels from a judge model instead of people.

Each loss is written from its formula and tested against its closed form and against
TRL's implementation (a test oracle only, never imported here). Modules here import from
the top-level package and from ``finetuning``, never from a later chapter's subpackage.
"""
