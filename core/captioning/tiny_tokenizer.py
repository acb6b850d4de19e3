"""A byte-level tokenizer built offline, for the tiny test and demo presets.

Real checkpoints ship their own tokenizer; the tiny presets cannot download one, so they use a
byte-level BPE with no merges (256 byte tokens plus LLaMA's special tokens). It round-trips any
text, which is all the tiny models need.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")


def build_tiny_tokenizer(extra_special_tokens: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """Return a LLaMA-style tokenizer (bos ``<s>``, eos ``</s>``, pad ``<pad>``) over bytes."""
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *extra_special_tokens):
        vocab[token] = len(vocab)
    for symbol in sorted(byte_alphabet):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    # Like LLaMA's tokenizer: a BOS token in front when special tokens are added.
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=list(extra_special_tokens) or None,
    )
    return tokenizer
