"""Every record's prompt tokenized once and memory-mapped: ``CaptionDataset(pretokenize=True)``.

A prompt goes through transformers' tokenizer in every epoch to the same ids, and in a DataLoader
worker that is a noticeable share of a sample (bench/RESULTS.md, "Per sample and the decode floor"). With
``pretokenize=True`` the prompts of all records whose caption is in the index are tokenized once,
in batches (a fast tokenizer's batch call runs on every core), and a sample reads its ids from
a memory-mapped array that every worker and rank on the machine shares.

The arrays live in a folder beside the sample index's cache, named by a digest of all the ids
depend on: the index's own fingerprint, the tokenizer (its class, its serialised state, its
settings), the prompt template, ``tokenizer_kwargs``, the caption keys, and the versions of
transformers and tokenizers. A changed input gives another name, so nothing stale is ever read;
opening one also re-tokenizes a few prompts and compares, which catches what a digest misses.
One process builds it under a lock, in a temporary folder renamed into place when whole; the
others wait and then map it (``storage.sidecars``). Where no folder can be written, the prompts
are tokenized as they are read, as without the option.

- ``ids.int32``: all the prompts' ids end to end (raw little-endian int32, written as they come);
- ``offsets.npy``: int64, one more than the index has rows; row ``r``'s ids are
  ``ids[offsets[r]:offsets[r + 1]]``;
- ``known.npy``: bool per row, False where the caption is not in the index (it is in an
  annotation file, or unusable: the dataset then reads it, or reports it, as it always does).

Only fast tokenizers (those with a ``backend_tokenizer``) are supported: a slow one has no state
that can be fingerprinted reliably, so it is refused with an error saying so.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import transformers
from mmengine.logging import print_log

from src.datasets.index.captions import resolve_caption
from src.datasets.errors import SampleError, write_error
from src.datasets.progress import tqdm
from src.datasets.storage.sidecars import build_once, remove
from src.datasets.index.sample_index import SampleIndex
from src.datasets.storage.stored_arrays import load_array
from src.datasets.index.token_ids import TokenIds

FORMAT_VERSION = 1
_BATCH = 4096  # prompts per tokenizer call
_SPOT_CHECKS = 3  # prompts re-tokenized on opening, compared with what is stored
# tokenizer_kwargs whose batch call gives each prompt the ids a single call gives it (padding to
# the longest of a batch would not, so it and the rest are refused).
SUPPORTED_KWARGS = ('add_special_tokens', 'truncation', 'max_length')
_ARRAYS = ('offsets', 'known')  # .npy files; the ids are a raw file, written batch by batch
_IDS = 'ids.int32'


class _NotInline(Exception):
    """The record's caption is in an annotation file: it is read with the sample, not here."""


def _no_annotation(_annotation: str) -> str:
    raise _NotInline


def inline_prompts(records: Iterable[dict], cap_keys: Sequence[str], prompt_of: Callable[[str], str]
                   ) -> tuple[list[int], list[str]]:
    """The positions in ``records`` of those whose caption is in the record, and their prompts
    (``prompt_of``: a caption's prompt, as the dataset's ``caption_prompt`` makes it). The others'
    captions are in annotation files, or unusable: they are read, or reported, with the sample."""
    positions, prompts = [], []
    for position, record in enumerate(records):
        try:
            prompts.append(prompt_of(resolve_caption(record, cap_keys, _no_annotation)))
        except (_NotInline, SampleError):
            continue
        positions.append(position)
    return positions, prompts


def tokenizer_state(tokenizer) -> str:
    """What a tokenizer's ids depend on, as text: its class, its backend's serialised state without
    the truncation and padding settings transformers changes on every call, and its settings
    without the file paths it was loaded from (the same tokenizer loaded elsewhere is the same)."""
    backend = getattr(tokenizer, 'backend_tokenizer', None)
    if backend is None:
        raise ValueError(f'pretokenize=True needs a fast tokenizer (one with a backend_tokenizer); '
                         f'{type(tokenizer).__name__} is not one: load it with use_fast=True, or '
                         f'leave pretokenize off')
    state = json.loads(backend.to_str())
    state.pop('truncation', None)
    state.pop('padding', None)
    settings = {key: value for key, value in tokenizer.init_kwargs.items()
                if key != 'name_or_path' and not key.endswith('_file')}
    return json.dumps([type(tokenizer).__qualname__, state, settings], sort_keys=True, default=str)


class DamagedStore(Exception):
    """A stored prompt-ids folder that is not what ``_build`` writes: it is rebuilt."""


class PromptIds:
    """The stored ids of each row of the whole index (``SampleIndex.table_row`` maps a dataset's
    position to its row); ``get(row)`` is a read-only int32 array, or None when not stored.
    ``vocab``: the tokenizer's size; a stored id outside it is a damaged store, never passed on."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, known: np.ndarray, folder: Path | None = None,
                 vocab: int | None = None):
        self.ids, self.offsets, self.known, self.folder, self.vocab = ids, offsets, known, folder, vocab

    def get(self, row: int) -> np.ndarray | None:
        if row >= len(self.known) or not self.known[row]:  # beyond the rows tokenized: a prefix
            return None
        start, end = self.offsets[row], self.offsets[row + 1]
        ids = self.ids[start:end]
        if not 0 <= start <= end <= len(self.ids) or (len(ids) and self.vocab is not None and (
                ids.min() < 0 or ids.max() >= self.vocab)):
            raise SampleError('bad-prompt-ids', f'{self.folder or "the prompt ids"}: row {row}: the stored ids are '
                                                f'damaged (outside the ids file or the vocabulary of {self.vocab}); '
                                                'remove the folder and it is built again')
        return ids

    def lengths(self, rows: np.ndarray) -> np.ndarray:
        """The prompt length in tokens of each of ``rows`` that is stored (others are left out)."""
        rows = rows[rows < len(self.known)]
        rows = rows[self.known[rows]]
        return self.offsets[rows + 1] - self.offsets[rows]

    def __reduce__(self):
        # Workers started with spawn map the folder again instead of receiving a copy of the arrays.
        if self.folder is not None:
            return _map, (self.folder, len(self.known), self.vocab)
        return PromptIds, (self.ids, self.offsets, self.known, None, self.vocab)


def _map(folder: Path, rows: int, vocab: int | None) -> PromptIds:
    """The store in ``folder`` for ``rows`` rows, its shapes checked (``DamagedStore`` else): a cut
    or altered file would give prompts cut short, or another row's."""
    ids_file = folder / _IDS
    try:
        # np.memmap refuses an empty file (no record had its caption inline)
        ids = np.memmap(ids_file, '<i4', mode='r') if ids_file.stat().st_size else np.zeros(0, '<i4')
        # Plain arrays over the mappings: slicing an np.memmap runs Python code for every slice.
        offsets, known = (np.asarray(load_array(folder / f'{name}.npy', mmap=True)) for name in _ARRAYS)
    except (OSError, ValueError) as exc:  # DamagedArray too
        raise DamagedStore(f'{folder}: unreadable ({exc})') from None
    if offsets.dtype != np.int64 or offsets.shape != (rows + 1,) or known.dtype != bool or known.shape != (rows,):
        raise DamagedStore(f'{folder}: offsets.npy or known.npy is not of its {rows} rows')
    if offsets[0] != 0 or offsets[-1] != len(ids):
        raise DamagedStore(f'{folder}: {_IDS} holds {len(ids)} ids, offsets.npy says {offsets[-1] - offsets[0]}')
    return PromptIds(np.asarray(ids), offsets, known, folder, vocab)


def tokenize_index(index: SampleIndex, cap_keys: Sequence[str], prompt_of: Callable[[str], str],
                   tokenizer, tokenizer_kwargs: dict, write: Callable[[np.ndarray], None]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Tokenizes the prompt of every row of ``index`` (a whole index, or its first rows), passing
    the ids to ``write`` a batch at a time, end to end; returns ``offsets`` and ``known``."""
    encode = TokenIds(tokenizer, tokenizer_kwargs).many
    lengths, known = np.zeros(len(index), np.int64), np.zeros(len(index), bool)
    with tqdm(total=len(index), unit='prompt', desc='tokenizing prompts') as bar:
        for start in range(0, len(index), _BATCH):
            positions, prompts = inline_prompts(
                (index[row] for row in range(start, min(start + _BATCH, len(index)))), cap_keys, prompt_of)
            rows = [start + position for position in positions]
            if prompts:
                encoded = encode(prompts)
                lengths[rows] = [len(ids) for ids in encoded]
                known[rows] = True
                write(np.fromiter(itertools.chain.from_iterable(encoded), '<i4', int(lengths[rows].sum())))
            bar.update(min(_BATCH, len(index) - start))
    offsets = np.zeros(len(index) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, known


def _digest(index_fingerprint: bytes, tokenizer, tokenizer_kwargs: dict, template: dict,
            cap_keys: Sequence[str]) -> str:
    parts = [FORMAT_VERSION, index_fingerprint.decode(), tokenizer_state(tokenizer),
             sorted(tokenizer_kwargs.items()), template, list(cap_keys), transformers.__version__,
             importlib.metadata.version('tokenizers')]  # transformers' Rust backend
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tokenize_into(temp: Path, arguments: tuple, folder: Path) -> int:
    """Tokenizes into the folder ``temp`` (an ``OSError`` naming ``folder`` when a write fails);
    how many prompts it holds."""
    try:
        with open(temp / _IDS, 'wb') as ids:  # written by the file, not tofile: its errors have no errno
            offsets, known = tokenize_index(*arguments, write=lambda batch: ids.write(memoryview(batch)))
        np.save(temp / 'offsets.npy', offsets)
        np.save(temp / 'known.npy', known)
    except OSError as exc:
        raise write_error(exc, folder) from None
    return int(known.sum())


def _in_memory(arguments: tuple) -> PromptIds:
    batches = []
    offsets, known = tokenize_index(*arguments, write=batches.append)
    return PromptIds(np.concatenate(batches) if batches else np.zeros(0, '<i4'), offsets, known)


def load_prompt_ids(index: SampleIndex, cap_keys: Sequence[str], prompt_of: Callable[[str], str],
                    tokenizer, tokenizer_kwargs: dict, template: dict,
                    check: Callable[[str], Sequence[int]]) -> PromptIds | None:
    """The prompt ids of ``index``'s whole table: mapped from the folder beside its cache, built
    there first if need be; built in memory for an index held in memory; None (and a warning)
    where the folder cannot be written. ``check(prompt)``: the ids the dataset would compute."""
    unsupported = sorted(set(tokenizer_kwargs) - set(SUPPORTED_KWARGS))
    if unsupported:
        raise ValueError(f'pretokenize=True supports tokenizer_kwargs {list(SUPPORTED_KWARGS)}, not '
                         f'{unsupported}: with those a batch call may not give the ids a single one does')
    whole = index.whole()
    # The rows up to the last one this dataset reads: with train_number_samples, the first N only
    # (tokenizing 23M prompts for a 1M run would take the 23M's time); a store of another prefix
    # is another folder.
    covered = int(index.table_rows().max()) + 1 if len(index) else 0
    prefix = whole if covered == len(whole) else whole.select(np.arange(covered))
    arguments = (prefix, cap_keys, prompt_of, tokenizer, tokenizer_kwargs)
    if index.cache is None:
        print_log(f'Tokenizing the prompts of {index.source} in memory (its index is held in memory)',
                  logger='current', level=logging.INFO)
        return _in_memory(arguments)
    digest = _digest(index.fingerprint, tokenizer, tokenizer_kwargs, template, cap_keys)
    folder = _covering_folder(index.cache.with_name(f'{index.cache.name}.prompt-ids-{digest}'), covered, len(whole))
    prefix_rows = folder.name[len(f'{index.cache.name}.prompt-ids-{digest}-first'):]
    rows = int(prefix_rows) if prefix_rows else len(whole)  # a store of the first rows, or of all
    if folder.name.endswith(digest):  # the whole index's store (existing, or to build)
        arguments = (whole,) + arguments[1:]
    try:
        try:
            stored = _open_or_build(folder, arguments, index.source, rows, len(tokenizer))
            agrees = _agrees(stored, arguments[0], cap_keys, prompt_of, check)
            problem = 'differ from what the tokenizer gives now (it changed in a way its fingerprint missed)'
        except (DamagedStore, SampleError) as exc:
            agrees, problem = False, f'are damaged: {exc}'
        if not agrees:
            print_log(f'The prompt ids in {folder} {problem}: rebuilding them', logger='current', level=logging.WARNING)
            remove(folder)  # a link planted there goes, never what it points to
            stored = _open_or_build(folder, arguments, index.source, rows, len(tokenizer))
        return stored
    except (OSError, DamagedStore) as exc:  # a full disk (the error names it), a store that cannot be replaced
        print_log(f'Cannot store the prompt ids of {index.source} in {folder} ({exc}): prompts are '
                  f'tokenized as they are read; give a writable index_cache_dir to store them',
                  logger='current', level=logging.WARNING)
        return None


def _covering_folder(whole: Path, covered: int, rows: int) -> Path:
    """The store to map or build for the first ``covered`` rows of ``rows``: the whole index's when
    it exists or is needed, else an existing one of a longer prefix, else ``<whole>-first<covered>``."""
    if whole.is_dir() or covered == rows:
        return whole
    prefixes = sorted((int(path.name.rsplit('-first', 1)[1]), path) for path in whole.parent.glob(f'{whole.name}-first*')
                      if path.is_dir() and path.name.rsplit('-first', 1)[1].isdigit())
    return next((path for length, path in prefixes if length >= covered), whole.with_name(f'{whole.name}-first{covered}'))


def _open_or_build(folder: Path, arguments: tuple, source: str, rows: int, vocab: int) -> PromptIds:
    """The store in ``folder``, built first when missing (once: ranks starting together wait for
    the first rather than all tokenizing; ``storage.sidecars``)."""
    def build(temp: Path) -> None:
        print_log(f'Tokenizing the prompts of {source} into {folder} (done once per tokenizer '
                  f'and template; later runs map it)', logger='current', level=logging.INFO)
        started = time.perf_counter()
        count = _tokenize_into(temp, arguments, folder)
        print_log(f'Tokenized {count} prompts of {source} in {time.perf_counter() - started:.1f} s '
                  f'({len(arguments[0]) - count} records have no usable caption in the index: '
                  f'theirs are read and tokenized with the sample)', logger='current', level=logging.INFO)

    return build_once(folder, lambda: _map(folder, rows, vocab) if folder.is_dir() else None, build, folder=True)


def _agrees(stored: PromptIds, whole: SampleIndex, cap_keys, prompt_of, check) -> bool:
    """Whether the first few stored prompts are what the tokenizer gives them now."""
    rows = np.flatnonzero(stored.known)[:_SPOT_CHECKS].tolist()
    _, prompts = inline_prompts((whole[row] for row in rows), cap_keys, prompt_of)
    return len(prompts) == len(rows) and all(
        list(check(prompt)) == stored.get(row).tolist() for row, prompt in zip(rows, prompts))
