"""llmfoundations: the shared package of the course *Foundational LLMs and Text Generation*.

One concept per module; every fast path has a readable reference beside it.

Dimension legend (used in every shape comment of the package)::

    B    batch size
    T    sequence length (Tq / Tk when queries and keys differ, e.g. with a KV cache)
    S    source length: the encoder output that cross-attention reads (models.EncoderDecoder)
    H    number of query heads
    Hkv  number of key/value heads (grouped-query: H % Hkv == 0; multi-query: Hkv == 1)
    D    head dimension (d_model // H)
    C    model width, d_model (= H * D)
    F    feed-forward width, d_ff
    E    number of experts (mixture of experts)
    K    top-k experts per token
    Nk   number of expert slots kept after the capacity limit (moe; N * K without one)
    V    vocabulary size
    G    sampled answers per prompt, a group (alignment.grpo)
    O    answer options a judge chooses from ("1".."5", or "A"/"B"; evaluation.judge)
    r    rank of a LoRA update (finetuning.lora)
    Cin, Cout  input / output features of one linear layer (C, F or H*D inside a block)
    M    bottleneck width of an adapter (Houlsby et al.'s m; finetuning.adapters)
    Tv   number of virtual tokens of a soft prompt (finetuning.prompt_tuning)
    N    number of items once flattened (tokens B*T, or the elements of a weight)
    Nb   number of quantization blocks, ceil(N / block size) (finetuning.nf4)
    Nd   number of documents (passages) of a retrieval corpus (applications.retrieval)
    Nq   number of queries searched at once (applications.retrieval)
    γ    draft tokens proposed per round of speculative decoding (inference.speculative)
    Ng   quantization groups per row of a weight, Cin / group size (inference.quantization)
    P    tokens per block (page) of a paged KV cache (inference.paged_kv)
    Np   number of blocks in a paged KV cache's pool (inference.paged_kv)

Tensors are batch-first: token ids are (B, T), hidden states (B, T, C),
per-head tensors (B, H, T, D), logits (B, T, V).
"""

__version__ = "0.1.0"
