"""A small byte-level BPE tokenizer with the InternVL3 (Qwen2.5) chat special tokens, trained here.

Tests and the demo cannot download a hub tokenizer, so they train this one in well under a second
and save it where ``AutoTokenizer.from_pretrained`` loads it: a config then changes only the path.
Byte-level BPE encodes any text without unknown tokens, as the real tokenizer does.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# `<|endoftext|>` first, so that it gets id 0: the `pad_index = 0` of the upstream configs.
SPECIAL_TOKENS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<img>', '</img>', '<IMG_CONTEXT>']
PAD_TOKEN = '<|endoftext|>'

_CORPUS = [
    'Generate an image: a red fox sitting in the snow at dawn, photorealistic',
    'Generate an image.',
    'user assistant system',
    'A watercolor painting of a lighthouse on a cliff above a stormy sea.',
    'A close-up photo of a cat with green eyes, studio lighting, 85mm lens.',
    'An astronaut riding a horse on the moon, digital art, trending on artstation.',
    'a bowl of ramen with chopsticks, top view, warm colours',
    'Minimalist poster of a mountain range under a starry night sky',
    'The quick brown fox jumps over the lazy dog 0123456789 .,;:!?-_()[]{}"\'',
    'Ünïcödé façade, naïve café — 東京 夜景, ночной город',
]


def build_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 1000) -> str:
    """Train the tokenizer into ``out_dir`` (once; an existing one is reused) and return the path."""
    out_dir = Path(out_dir)
    if (out_dir / 'tokenizer.json').exists():
        return str(out_dir)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token='<|im_end|>',
                                   additional_special_tokens=SPECIAL_TOKENS[1:])
    # Save beside the target and rename, so a concurrent reader never sees half a tokenizer.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix='.tokenizer-'))
    fast.save_pretrained(tmp)
    try:
        tmp.rename(out_dir)
    except OSError:  # another process won the race: its copy is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out_dir)
