"""The sample index's cache: an Arrow IPC file beside the index (or under ``cache_dir``), keyed on
the source's identity (resolved path; size, mtime, ctime and a digest of each file; the format
version), built once as every file beside it is (``storage.sidecars``: under a lock, written aside
and renamed); a stale or unreadable cache is rebuilt, never used."""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import pyarrow as pa
from mmengine.logging import print_log

from src.datasets.errors import write_error
from src.datasets.storage.sidecars import Unwritable, build_once
from src.datasets.index.index_source import _conform, _no_records, _source_batches, _unified_schema

# Bump when the cache layout or the conversion of records changes: old caches are then rebuilt.
FORMAT_VERSION = 2
_FINGERPRINT_KEY = b'sampleindex.fingerprint'


# ------------------------------------------------------------------------------------- the cache

# A member up to this size is hashed whole; a larger one by its head, its tail and blocks spread
# between, 1.5 MiB whatever its size: the key is computed at every start of every rank, where a
# whole-file hash of a large index would dominate (bench/RESULTS.md, "Start-up and construction").
_HASH_WHOLE_BYTES = 4 << 20
_HASH_BLOCK = 256 << 10  # the head and the tail; also the read size of a whole hash
_HASH_SPREAD = 64  # blocks of _HASH_SPREAD_BYTES between the head and the tail
_HASH_SPREAD_BYTES = 16 << 10


def _content_digest(path: Path, size: int) -> str:
    """A digest of ``path``'s bytes: all of them for a small file, else a fixed sample of them."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, 'rb') as f:
        if size <= _HASH_WHOLE_BYTES:
            while chunk := f.read(_HASH_BLOCK):
                digest.update(chunk)
            return digest.hexdigest()
        spans = [(0, _HASH_BLOCK), (size - _HASH_BLOCK, _HASH_BLOCK)]
        step = (size - 2 * _HASH_BLOCK) // (_HASH_SPREAD + 1)
        spans += [(_HASH_BLOCK + step * (i + 1), _HASH_SPREAD_BYTES) for i in range(_HASH_SPREAD)]
        for offset, length in spans:
            digest.update(os.pread(f.fileno(), length, offset))
    return digest.hexdigest()


def _fingerprint(resolved: Path, members: list[Path]) -> bytes:
    """What the cache was built from: each member's size, mtime, ctime and a digest of its bytes.

    The ctime is what tells an edit that kept the size and set the mtime back (``touch -d``, a copy
    with preserved times): the kernel sets it on every write and no call sets it back. The digest
    covers the file systems whose ctime means little (some network and FUSE mounts)."""
    stats = [(m.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, _content_digest(m, st.st_size))
             for m in members for st in (m.stat(),)]
    return json.dumps({'format': FORMAT_VERSION, 'source': str(resolved), 'members': stats},
                      sort_keys=True).encode()


def cache_path_for(data_path, cache_dir=None) -> Path:
    """Where the cache of ``data_path`` lives: beside it, or in ``cache_dir`` under a name that
    keeps apart sources of the same file name. Beside the name it is given in its folder, never
    where a link of that name leads: the cache and the files beside it stay in that folder."""
    named = Path(os.path.abspath(data_path))
    named = named.parent.resolve() / named.name
    if cache_dir is None:
        return named.parent / f'.{named.name}.sampleindex.arrow'
    digest = hashlib.sha1(str(named).encode()).hexdigest()[:12]
    return Path(cache_dir) / f'{named.name}.{digest}.sampleindex.arrow'


_SAID_STALE: set = set()


def _open_cache(path: Path, fingerprint: bytes) -> pa.Table | None:
    """The memory-mapped table in ``path``, or None if it is missing, stale or corrupt."""
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        if (reader.schema.metadata or {}).get(_FINGERPRINT_KEY) != fingerprint:
            if str(path) not in _SAID_STALE:  # looked at again under the build lock: said once
                _SAID_STALE.add(str(path))
                print_log(f'The sample index cache {path} is stale (its source changed): rebuilding',
                          logger='current', level=logging.INFO)
            return None
        table = reader.read_all()
        table.validate()
        return table
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (pa.ArrowInvalid, OSError) as exc:
        print_log(f'The sample index cache {path} is unreadable ({exc}): rebuilding',
                  logger='current', level=logging.WARNING)
        return None


class _SpillWriter:
    """Writes batches to segment files next to the cache, a new segment whenever the schema
    changes, so that a build holds one batch in memory; ``finish`` unifies them into one file."""

    def __init__(self, temp_path: str, metadata: dict):
        self.temp_path = temp_path
        self.metadata = metadata
        self.segments: list[tuple[str, pa.Schema]] = []
        self.writer = None

    def write(self, batch: pa.RecordBatch) -> None:
        if self.writer is None or not batch.schema.equals(self.segments[-1][1]):
            self._close_writer()
            segment = f'{self.temp_path}.{len(self.segments)}'
            self.segments.append((segment, batch.schema))
            self.writer = pa.ipc.new_file(segment, batch.schema.with_metadata(self.metadata))
        self.writer.write_batch(batch)

    def _close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def finish(self) -> None:
        """Leaves the whole index in ``temp_path``."""
        self._close_writer()
        schema = _unified_schema(s for _, s in self.segments)
        if len(self.segments) == 1 and self.segments[0][1].equals(schema):
            os.replace(self.segments.pop()[0], self.temp_path)
            return
        with pa.ipc.new_file(self.temp_path, schema.with_metadata(self.metadata)) as writer:
            for segment, _ in self.segments:
                reader = pa.ipc.open_file(pa.memory_map(segment))
                for i in range(reader.num_record_batches):
                    writer.write_batch(_conform(reader.get_batch(i), schema))

    def remove_segments(self) -> None:
        """The clean-up, after the build or its failure: a writer that cannot flush its end (a full
        disk) is dropped quietly, so the first error stands and the segments are removed anyway."""
        with contextlib.suppress(OSError):
            self._close_writer()
        self.writer = None
        for segment, _ in self.segments:
            with contextlib.suppress(FileNotFoundError):
                os.remove(segment)


def cached_table(source: str, members: list[Path], cache: Path, fingerprint: bytes) -> pa.Table:
    """The index of ``source`` memory-mapped from ``cache``, built there first when it is missing,
    stale or unreadable (once: other processes building the same one wait for it). ``Unwritable``
    when it cannot be kept there; errors reading the source pass."""
    started = []

    def build(temp: Path) -> None:
        print_log(f'Indexing {source} into {cache} (done once; later loads memory-map it)',
                  logger='current', level=logging.INFO)
        started.append(time.perf_counter())
        _write_cache(members, temp, cache, fingerprint, source)

    table = build_once(cache, lambda: _open_cache(cache, fingerprint), build,
                       leftovers=[f'.{glob.escape(cache.name)}.*.tmp*'])  # as builds before this one named them
    if started:
        print_log(f'Indexed {table.num_rows} records of {source} in '
                  f'{time.perf_counter() - started[0]:.1f} s', logger='current', level=logging.INFO)
    return table


def _write_cache(members: list[Path], temp: Path, cache: Path, fingerprint: bytes, source: str) -> None:
    """The index of ``members`` written to ``temp``, a batch at a time (``Unwritable`` naming
    ``cache`` when a write fails)."""
    spill = _SpillWriter(str(temp), {_FINGERPRINT_KEY: fingerprint})
    try:
        for batch in _source_batches(members):
            if len(batch):
                try:
                    spill.write(batch)
                except OSError as exc:
                    raise Unwritable(write_error(exc, cache)) from exc
        if not spill.segments:
            raise _no_records(source)
        try:
            spill.finish()
        except OSError as exc:
            raise Unwritable(write_error(exc, cache)) from exc
    finally:
        spill.remove_segments()
