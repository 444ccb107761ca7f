"""A prompt's token ids through the Rust tokenizer's own call where transformers would only pass the
text through to it.

A fast tokenizer's ``encode`` sets the Rust tokenizer's truncation and padding for the call, calls
it, and turns the result into Python objects (``BatchEncoding``, one per field): per sample in a
DataLoader worker that is about half of the tokenization (bench/RESULTS.md, "Per sample and the
decode floor").
With no truncation or padding asked for, no special-token splitting and the encode methods as
transformers' fast tokenizer has them, that call gives the ids of the Rust tokenizer's ``encode``:
those cases go there. Whether the Rust tokenizer's settings still allow it is looked at on every
call (another user of the same tokenizer may have left truncation set: transformers' next call then
resets it); a tokenizer class that overrides any of the encode methods always goes through
transformers. Each ``TokenIds`` is checked once against transformers' call when made.

A batch call runs the Rust tokenizer's thread pool, which can hang for good in a process forked
after its parent used the pool (a lock left taken by a thread that does not exist in the child,
whatever TOKENIZERS_PARALLELISM says): in a forked process, a batch is encoded a text at a time.
"""
from __future__ import annotations

import functools
import os

from transformers import PreTrainedTokenizerFast
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

_forked = False


def _in_forked_child() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_in_forked_child)

# What transformers' fast tokenizer runs on the way to the Rust call; a subclass overriding any of
# them may change the text or the ids (GPT-2's asserts its options, for one): transformers' then.
_ENCODE_PATH = (('encode', PreTrainedTokenizerBase), ('encode_plus', PreTrainedTokenizerBase),
                ('__call__', PreTrainedTokenizerBase), ('_encode_plus', PreTrainedTokenizerFast),
                ('_batch_encode_plus', PreTrainedTokenizerFast))
_CHECK_TEXT = 'A check: the quick brown fox, 0123456789 — ünïcödé 東京.'


class TokenIds:
    """``one(text)``: ``tokenizer.encode(text, **tokenizer_kwargs)``; ``many(texts)``:
    ``tokenizer(texts, **tokenizer_kwargs)['input_ids']``. The same ids, through the Rust
    tokenizer where it can (its batch call also spares converting every encoding to Python)."""

    def __init__(self, tokenizer, tokenizer_kwargs: dict):
        self.tokenizer, self.tokenizer_kwargs = tokenizer, dict(tokenizer_kwargs)
        self.special = self.tokenizer_kwargs.get('add_special_tokens', True)
        self.split = bool(getattr(tokenizer, 'split_special_tokens', False))
        self.direct = _may_call_directly(tokenizer, self.tokenizer_kwargs)
        if self.direct and self.one(_CHECK_TEXT) != tokenizer.encode(_CHECK_TEXT, **self.tokenizer_kwargs):
            self.direct = False

    @functools.cached_property
    def longest_token(self) -> int:
        """The most characters of text one token stands for: its vocabulary's longest entry (a
        byte-level entry has a character per byte, so no fewer than the text's)."""
        return max(map(len, self.tokenizer.get_vocab()), default=1)

    def _backend(self):
        """The Rust tokenizer, when it may be called directly now: set as transformers would set it
        for a plain call (looked up each time: the one transformers sets, also after pickling)."""
        if not self.direct:
            return None
        backend = self.tokenizer.backend_tokenizer
        if backend.truncation is None and backend.padding is None and backend.encode_special_tokens == self.split:
            return backend
        return None

    def one(self, text: str) -> list[int]:
        backend = self._backend()
        if backend is not None:
            return backend.encode(text, add_special_tokens=self.special).ids
        return self.tokenizer.encode(text, **self.tokenizer_kwargs)

    def many(self, texts: list[str]) -> list[list[int]]:
        if _forked:  # no thread pool in a forked process: see the module's docstring
            return [self.one(text) for text in texts]
        backend = self._backend()
        if backend is not None:
            return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=self.special)]
        return self.tokenizer(texts, **self.tokenizer_kwargs)['input_ids']


def _may_call_directly(tokenizer, tokenizer_kwargs: dict) -> bool:
    """Whether ``tokenizer_kwargs`` and the tokenizer's class allow calling the Rust tokenizer."""
    return (set(tokenizer_kwargs) <= {'add_special_tokens'} and isinstance(tokenizer, PreTrainedTokenizerFast)
            and all(getattr(type(tokenizer), name) is getattr(base, name) for name, base in _ENCODE_PATH))
