"""llmfoundations: the shared package of the course *Foundational LLMs and Text Generation*.

One concept per module; every fast path has a readable reference beside it.

Dimension legend (used in every shape comment of the package)::

    B    batch size
    T    sequence length (Tq / Tk when queries and keys differ, e.g. with a KV cache)
    H    number of query heads
    Hkv  number of key/value heads (grouped-query: H % Hkv == 0; multi-query: Hkv == 1)
    D    head dimension (d_model // H)
    C    model width, d_model (= H * D)
    F    feed-forward width, d_ff
    E    number of experts (mixture of experts)
    K    top-k experts per token
    V    vocabulary size
    O    answer options a judge chooses from ("1".."5", or "A"/"B"; evaluation.judge)

Tensors are batch-first: token ids are (B, T), hidden states (B, T, C),
per-head tensors (B, H, T, D), logits (B, T, V).
"""

__version__ = "0.1.0"
