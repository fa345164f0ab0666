"""Chapter 6: running a trained model faster, smaller and for many users at once.

One concept per module:

- ``flash``: tiled attention with an online softmax, the readable reference of the
  fast kernel; ``flash_triton``: the same algorithm as a Triton GPU kernel.
- ``quantization``: int8 / int4 weights with per-channel or per-group scales, GPTQ from
  calibration activations, fake quantization for quantization-aware training.
- ``distillation``: a student trained on a teacher's distributions (Hinton et al., 2015),
  generalized JSD and on-policy distillation (Agarwal et al., 2024).
- ``speculative``: a small draft model proposes, the large one verifies; the output
  distribution is exactly the large model's (Leviathan et al., 2023; Chen et al., 2023).
- ``paged_kv``, ``prefix_cache``, ``batching``: serving many requests: a KV cache in
  fixed-size blocks, reuse of shared prefixes, continuous batching.
- ``parallel``: data, tensor and pipeline parallelism on ``torch.distributed``.
- ``parallel_costs``: what each split stores and sends per rank (ring all-reduce, ZeRO
  stages), and the GPipe timeline with its bubble.
- ``parallel_timing``: many timed training steps of each strategy side by side, for
  ``benchmarks/parallelism.py``.
- ``fast_decode``: greedy decoding arranged for speed (static cache, fused projections,
  optional ``torch.compile``), tested equal to ``generate``; ``prepack``: weights packed
  once for a CPU matrix multiply (oneDNN or MKL, whichever times faster here), for it and
  for any model's ``nn.Linear``.

The KV cache itself is ``llmfoundations.kv_cache`` (chapter 1's models use it). Each
module that re-implements something a well-kept library does (torchao, TRL,
transformers) is tested equal to it; the library is a test oracle only. Modules here
import from the top-level package and from earlier chapters' subpackages, never from a
later chapter's.
"""
