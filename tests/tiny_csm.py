"""A tiny, randomly initialised CSM built offline, for every test of the engine and its hosts.

Real weights are never downloaded in tests. The backbone and depth decoder are shrunk (hidden 64,
2 layers), but the codec keeps the default `MimiConfig()`: the processor computes the number of
audio tokens from the real Mimi strides, and a shrunken codec would disagree with it. Both
codebook vocabularies are the codec's 2048 codes, so random weights never sample an id the codec
cannot decode.

Use it as a pytest plugin (`pytest_plugins = ["tests.tiny_csm"]`): the `tiny_csm_dir` fixture
builds the model once per session and saves it, so subprocesses (servers, the RunPod handler)
can load it from disk like any local model directory.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest

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


def build_tiny_csm(directory: Path, seed: int = 0) -> Path:
    """Build the tiny random CSM and its processor and save both to `directory`."""
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
    depth = CsmDepthDecoderConfig(
        num_codebooks=32,
        backbone_hidden_size=64,
        vocab_size=2048,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    config = CsmConfig(
        num_codebooks=32,
        vocab_size=2048,
        text_vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
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


@pytest.fixture(scope="session")
def tiny_csm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny CSM directory, built once per test session."""
    return build_tiny_csm(tmp_path_factory.mktemp("tiny-csm") / "model")


@pytest.fixture(scope="session")
def tiny_engine(tiny_csm_dir: Path):  # -> CsmEngine
    """The tiny CSM loaded once per session on the CPU."""
    from csm_offload_local_csm.engine import CsmEngine, EngineOptions

    return CsmEngine.load(EngineOptions(model=str(tiny_csm_dir), device="cpu"))
