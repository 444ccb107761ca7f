"""A sample's prompt ids: its caption in the template, or with probability ``unconditional`` the
CFG prompt, cut to ``max_length`` as ``truncation`` says; the ids stored beforehand (``pretokenize``)
or tokenized with the batch's where they are, else made here.

The prompt's text is the dataset's to say (``prompt_of``, ``caption_prompt``: subclasses change
them): the encoder is handed those functions where it needs them, and keeps only what its
tokenizer makes once (the tokenizer's calls, the CFG prompt's ids).
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
import torch

from src.datasets.index.captions import cut_caption
from src.datasets.index.prompt_ids import inline_prompts
from src.datasets.index.token_ids import TokenIds

TRUNCATIONS = ('ids', 'caption')
HARMON_GENERATION = 'Generate an image: {input}'  # Harmon's prompts, for templates without their own
HARMON_CFG = 'Generate an image.'


def image_start_token(template: dict) -> str | None:
    """IMG_START_TOKEN where ``template`` ends every prompt with it (a cut at ``max_length`` then
    loses it first), else None."""
    if template.get('IMG_START_TOKEN_FOR_GENERATION', True):
        return template.get('IMG_START_TOKEN') or None
    return None


def template_prompt(template: dict, caption: str | None) -> str:
    """The whole prompt text of ``caption`` in ``template`` (None: the unconditional CFG prompt).

    A chat template made for understanding (xtuner's ``qwen_chat``, as Harmon uses it) has no
    GENERATION, CFG or IMG_START_TOKEN: Harmon's own wording is used, with no start token."""
    if caption is None:
        prompt = template.get('CFG', HARMON_CFG)
    else:
        prompt = template.get('GENERATION', HARMON_GENERATION).format(input=caption)
    return template['INSTRUCTION'].format(input=prompt) + (image_start_token(template) or '')


class PromptEncoder:
    """The prompt ids of one tokenizer, its kwargs and the dataset's prompt options (see the
    module); ``made_for`` says whether the options are still those it was made for."""

    def __init__(self, tokenizer, tokenizer_kwargs: dict, max_length, unconditional: float, truncation: str):
        self.tokenizer, self.tokenizer_kwargs = tokenizer, dict(tokenizer_kwargs)
        self.max_length, self.unconditional, self.truncation = max_length, unconditional, truncation
        self._tokens = None  # made on first use: a dataset without prompts never loads the tokenizer's tables
        self._cfg_ids = None  # the unconditional prompt's ids, the same for every sample

    def made_for(self, tokenizer, tokenizer_kwargs, max_length, unconditional, truncation) -> bool:
        return (tokenizer is self.tokenizer and tokenizer_kwargs == self.tokenizer_kwargs
                and max_length == self.max_length and unconditional == self.unconditional
                and truncation == self.truncation)

    def tokens(self) -> TokenIds:
        """The tokenizer's calls (``src.datasets.index.token_ids``: the Rust tokenizer's own where
        transformers would only pass the text on)."""
        if self._tokens is None:
            self._tokens = TokenIds(self.tokenizer, self.tokenizer_kwargs)
        return self._tokens

    def encode(self, prompt: str) -> torch.Tensor:
        # One array, then the tensor: return_tensors='pt' built a BatchEncoding and a tensor for
        # every field of it, which took as long as the tokenization (bench/bench_sample.py).
        return torch.from_numpy(np.array(self.tokens().one(prompt), np.int64))

    def cut(self, caption: str) -> str:
        """``caption`` stripped, and cut where it is far longer than ``max_length`` tokens can be
        (``captions.cut_caption``; the bound is twice the characters ``max_length`` of the
        tokenizer's longest tokens can cover): its prompt's first ``max_length`` ids are unchanged."""
        if not isinstance(self.max_length, int):
            return caption.strip()
        return cut_caption(caption, 2 * self.max_length * self.tokens().longest_token)

    def input_ids(self, text: str, rng: random.Random, stored_ids: torch.Tensor | None,
                  caption_prompt: Callable[[str], str], prompt_of: Callable[[str | None], str]) -> dict:
        """``{'input_ids': ...}`` of ``text`` (the CFG prompt with probability ``unconditional``):
        ``stored_ids`` where given, else the ids of ``caption_prompt(text)``; cut at ``max_length``."""
        conditional = rng.uniform(0, 1) >= self.unconditional
        if not conditional:
            if self._cfg_ids is None:
                self._cfg_ids = self.encode(prompt_of(None))
            input_ids = self._cfg_ids.clone()
        elif stored_ids is not None:
            input_ids = stored_ids
        else:
            input_ids = self.encode(caption_prompt(text))
        if len(input_ids) > self.max_length and conditional and self.truncation == 'caption':
            input_ids = self.fit_caption(self.cut(text), prompt_of)
        return dict(input_ids=input_ids[:self.max_length])

    def fit_caption(self, caption: str, prompt_of: Callable[[str], str]) -> torch.Tensor:
        """``truncation='caption'``: the prompt of the longest start of the caption (in tokens) that
        fits in ``max_length``, so the template's end and IMG_START_TOKEN survive (a binary search:
        a few tokenizations, for the rare prompt that is too long)."""
        words = self.tokenizer.encode(caption, add_special_tokens=False)
        best = self.encode(prompt_of(''))
        low, high = 1, len(words)
        while low <= high:
            middle = (low + high) // 2
            ids = self.encode(prompt_of(self.tokenizer.decode(words[:middle]).strip()))
            if len(ids) <= self.max_length:
                best, low = ids, middle + 1
            else:
                high = middle - 1
        return best

    def batch_ids(self, records: Sequence[dict], cap_keys: Sequence[str],
                  caption_prompt: Callable[[str], str]) -> list[torch.Tensor | None]:
        """The ids of the prompts of a batch's records whose captions are in the index (None for
        the others), in the batch's order:
        tokenized one after another (the tokenizer's tables stay in the cache, where between two
        decodes they do not: bench/bench_sample.py). One prompt at a time: the Rust tokenizer's
        batch call runs a thread pool, which hung in a forked DataLoader worker after the parent
        had used it."""
        positions, prompts = inline_prompts(records, cap_keys, caption_prompt)
        ids = [None] * len(records)
        for position, prompt in zip(positions, prompts):
            ids[position] = self.encode(prompt)
        return ids
