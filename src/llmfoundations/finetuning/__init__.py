"""Chapter 3, part 1: fine-tuning a pre-trained model, fully or parameter-efficiently.

One concept per module:

- ``sft``: supervised fine-tuning data and loss: prompt tokens masked with ``-100``,
  SmolLM2's chat format, the loss over response tokens only.
- ``lora``: low-rank adaptation of linear layers (Hu et al., 2021), rsLoRA scaling,
  merging, saving only the adapter.
- ``nf4``: the 4-bit NormalFloat code, block-wise quantization with double quantization
  of the scales, and LoRA on a frozen NF4 base (QLoRA; Dettmers et al., 2023).
- ``adapters``: bottleneck adapters after attention and feed-forward (Houlsby et al., 2019).
- ``prompt_tuning``: learned virtual tokens in front of the input (Lester et al., 2021).

Each module is tested equal to the library that practitioners use for the same thing
(peft, bitsandbytes); those libraries are test oracles only, never imported here.
Modules here import from the top-level package (chapters 1, 2 and 4), never from a later
chapter's subpackage.
"""
