"""The helpers every upstream dataset module imports (``from src.datasets.utils import ...``), with
upstream's names, signatures and results: ``crop2square``, ``load_jsonl``, ``encode_fn`` (xtuner's
conversation encoding with ``image_length`` image placeholders) and VGT's ``pad_input_ids``.

xtuner's token constants are written out here (importing ``xtuner.utils`` would cost every process
seconds of imports); ``tests/test_family.py`` checks them against xtuner. ``encode_fn`` asks xtuner for a
tokenizer's BOS / EOS ids where it runs, as upstream does: only the understanding datasets use it,
and their configs import xtuner anyway.
"""
from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from src.datasets.collate_functions import pad_input_ids as _pad
from src.datasets.index.sample_index import iter_jsonl

IGNORE_INDEX = -100  # xtuner.utils.IGNORE_INDEX: labels the loss skips
IMAGE_TOKEN_INDEX = -200  # xtuner.utils.IMAGE_TOKEN_INDEX: where the image's embeddings go
DEFAULT_IMAGE_TOKEN = '<image>'  # xtuner.utils.DEFAULT_IMAGE_TOKEN
INPUT_IMAGE_TOKEN_INDEX = IMAGE_TOKEN_INDEX
OUTPUT_IMAGE_TOKEN_INDEX = -300


def crop2square(pil_img, rng=random):
    """A square of side ``min(width, height)`` cut from ``pil_img`` at a random place along its long
    side (``rng``: a ``random.Random``; upstream used the module's global stream)."""
    width, height = pil_img.width, pil_img.height
    if width > height:
        x0, y0, side = rng.randint(0, width - height), 0, height
    else:  # one draw for a square picture too, as upstream's
        x0, y0, side = 0, rng.randint(0, height - width), width
    return pil_img.crop(box=(x0, y0, x0 + side, y0 + side))


def load_jsonl(json_file) -> list[dict]:
    """The records of a JSON-lines file (errors name the file and line)."""
    return list(iter_jsonl(json_file))


def _encode_chunks(text: str, tokenizer, with_image_token: bool, image_length: int) -> list[int]:
    """``text``'s ids; with ``with_image_token``, its one ``<image>`` as ``image_length`` placeholders."""
    if with_image_token and DEFAULT_IMAGE_TOKEN in text:
        chunks = text.split(DEFAULT_IMAGE_TOKEN)
        if len(chunks) != 2:
            raise ValueError(f'a turn may hold one {DEFAULT_IMAGE_TOKEN}, this one holds {len(chunks) - 1}')
        before, after = (tokenizer.encode(chunk, add_special_tokens=False) for chunk in chunks)
        return before + [IMAGE_TOKEN_INDEX] * image_length + after
    return tokenizer.encode(text, add_special_tokens=False)


def encode_fn(example: dict, tokenizer, max_length: int | None = None, image_length: int = 1,
              input_ids_with_output: bool = True, with_image_token: bool = False, truncation='right') -> dict:
    """``example['conversation']`` (turns of ``input`` and ``output``, as xtuner's ``template_map_fn``
    leaves them) as ``{'input_ids', 'labels'}``: the inputs unlabelled (IGNORE_INDEX), the outputs
    labelled unless a turn says ``output_with_loss=False``, BOS before a turn that follows an EOS,
    the EOS after an output unless ``need_eos_token=False``, a turn's ``sep`` unlabelled; cut to
    ``max_length`` on the ``truncation`` side ('right', 'left', or None: never)."""
    from xtuner.dataset.utils import get_bos_eos_token_ids  # tokenizer-specific BOS / EOS (Qwen has no BOS)
    bos, eos = get_bos_eos_token_ids(tokenizer)
    bos, eos = bos or [], eos or []  # a tokenizer without a BOS (or EOS) token adds none
    turns = example['conversation']
    if len(turns) > 1 and not input_ids_with_output:
        raise ValueError('a conversation of several turns needs input_ids_with_output=True')
    input_ids, labels = [], []
    needs_bos = True
    for turn in turns:
        if needs_bos:
            input_ids += bos
            labels += [IGNORE_INDEX] * len(bos)
        encoded = _encode_chunks(turn['input'], tokenizer, with_image_token, image_length)
        input_ids += encoded
        labels += [IGNORE_INDEX] * len(encoded)
        if not (input_ids_with_output and 'output' in turn):
            continue
        with_loss = turn.get('output_with_loss', True)
        encoded = _encode_chunks(turn['output'], tokenizer, with_image_token, image_length)
        input_ids += encoded
        labels += list(encoded) if with_loss else [IGNORE_INDEX] * len(encoded)
        needs_bos = turn.get('need_eos_token', True)
        if needs_bos:
            input_ids += eos
            labels += list(eos) if with_loss else [IGNORE_INDEX] * len(eos)
        if turn.get('sep', ''):
            separator = tokenizer.encode(turn['sep'], add_special_tokens=False)
            input_ids += separator
            labels += [IGNORE_INDEX] * len(separator)
    if max_length is not None and len(input_ids) > max_length:
        if truncation == 'right':
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        elif truncation == 'left':
            input_ids, labels = input_ids[-max_length:], labels[-max_length:]
        elif truncation is not None:
            raise ValueError(f"truncation={truncation!r}: 'right', 'left' or None")
    return {'input_ids': input_ids, 'labels': labels}


def pad_input_ids(input_ids: Sequence[torch.Tensor], batch_first: bool = True, padding_value: int = 0,
                  padding_mode: str = 'left') -> tuple[torch.Tensor, torch.Tensor]:
    """VGT's: ``input_ids`` padded with ``padding_value`` on ``padding_mode``'s side ('left' or
    'right'), and the boolean mask of real ids; ``[B, T]``, or ``[T, B]`` unless ``batch_first``."""
    if len(input_ids) == 0:
        raise ValueError('input_ids is empty: nothing to pad')
    if padding_mode not in ('left', 'right'):
        raise ValueError(f"padding_mode must be 'left' or 'right', not {padding_mode!r}")
    padded, mask = _pad(input_ids, padding_value, padding_mode)
    return (padded, mask) if batch_first else (padded.T, mask.T)
