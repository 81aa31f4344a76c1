"""A randomly initialised CSM, built offline: for tests, benchmarks and trying the plumbing
without the gated weights. It speaks noise.

The codec keeps the default `MimiConfig()`: the processor computes the number of audio tokens
from the real Mimi strides, and a shrunken codec would disagree with it. Both codebook
vocabularies are the codec's 2048 codes (the real 2051 would let random weights sample ids the
codec cannot decode), and the text tokenizer is one token per printable character, built with
the `tokenizers` package and CSM's special tokens. Mimi's codebooks start at zero, which would
decode every code to the same sound, so they are randomised too.
"""

from __future__ import annotations

import string
from pathlib import Path

SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|AUDIO|>", "<|audio_eos|>", "<pad>")
UNK = "<unk>"
#: Message = bos, "[speaker]", text, eos, then the audio placeholder for context turns.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- bos_token + '[' + message['role'] + ']' -}}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}{{- item['text'] -}}"
    "{%- endfor -%}"
    "{{- eos_token -}}"
    "{%- for item in message['content'] if item['type'] == 'audio' -%}"
    "{{- '<|AUDIO|><|audio_eos|>' -}}"
    "{%- endfor -%}"
    "{%- endfor -%}"
)


#: (backbone, depth decoder) shapes. "full" is CSM-1B's (transformers' defaults).
SIZES: dict[str, tuple[dict[str, int], dict[str, int]]] = {
    "tiny": (
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
    ),
    "full": (
        {
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 16,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
        },
        {
            "hidden_size": 1024,
            "intermediate_size": 8192,
            "num_hidden_layers": 4,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
        },
    ),
}


def _vocab() -> dict[str, int]:
    # One token per printable character: token counts then track text length, which keeps the
    # context-limit tests honest without a trained tokenizer.
    tokens = [UNK, *SPECIAL_TOKENS, *sorted(set(string.printable) - set(string.whitespace)), " "]
    return {token: index for index, token in enumerate(tokens)}


def build_tokenizer():  # -> PreTrainedTokenizerFast
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = _vocab()
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<pad>",
        unk_token=UNK,
        padding_side="left",
        extra_special_tokens={"audio_token": "<|AUDIO|>", "audio_eos_token": "<|audio_eos|>"},
    )


def build_random_csm(directory: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Build a randomly initialised CSM ("tiny", or "full": CSM-1B's shapes) with its
    processor, and save both to `directory`."""
    import torch
    from transformers import (
        CsmConfig,
        CsmDepthDecoderConfig,
        CsmForConditionalGeneration,
        CsmProcessor,
        EncodecFeatureExtractor,
        MimiConfig,
    )

    tokenizer = build_tokenizer()
    vocab = _vocab()
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    backbone, decoder = SIZES[size]
    depth = CsmDepthDecoderConfig(
        num_codebooks=32, backbone_hidden_size=backbone["hidden_size"], vocab_size=2048, **decoder
    )
    config = CsmConfig(
        num_codebooks=32,
        vocab_size=2048,
        text_vocab_size=len(vocab),
        **backbone,
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<|begin_of_text|>"],
        audio_token_id=vocab["<|AUDIO|>"],
        audio_eos_token_id=vocab["<|audio_eos|>"],
        codebook_pad_token_id=2047,
        codebook_eos_token_id=0,
        depth_decoder_config=depth.to_dict(),
        codec_config=MimiConfig().to_dict(),
    )
    torch.manual_seed(seed)
    model = CsmForConditionalGeneration(config).eval()
    _randomise_codebooks(model)
    extractor = EncodecFeatureExtractor(feature_size=1, sampling_rate=24_000)
    processor = CsmProcessor(extractor, tokenizer, chat_template=CHAT_TEMPLATE)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def _randomise_codebooks(model) -> None:
    """Mimi initialises its codebooks to zeros, so every code would decode to the same audio;
    random codebooks make the audio depend on the sampled codes (and seeds testable)."""
    import torch

    with torch.no_grad():
        for module in model.codec_model.modules():
            if hasattr(module, "embed_sum"):
                module.embed_sum.normal_()
                module._embed = None  # the cached division of the old zeros
