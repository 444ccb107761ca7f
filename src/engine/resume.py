"""Which checkpoint ``--resume`` continues from: the latest whole one of a work folder.

mmengine resumes from the file its ``last_checkpoint`` names and fails deep in ``torch.load`` when
that file was cut short (a full disk, a job killed while saving). Here the checkpoints are checked
first, newest first, and a damaged one is passed over, saying so: a run goes on from the previous
one rather than not at all.
"""
from __future__ import annotations

import logging
import os
import zipfile

logger = logging.getLogger(__name__)

_ZIP_MAGIC = b'PK\x03\x04'  # torch.save's format (a zip archive); the legacy one is a bare pickle


class NoCheckpoint(Exception):
    """Nothing in the work folder can be resumed from; the message says what was found."""


def damage(path: str) -> str | None:
    """Why the checkpoint ``path`` cannot be loaded (cut short, a bad CRC, unreadable), or None.
    A zip checkpoint is read whole, each member checked against its CRC; a legacy pickle, which
    holds no checksum, only for being there and not empty."""
    try:
        with open(path, 'rb') as f:
            head = f.read(4)
        if not head:
            return 'an empty file'
        if head != _ZIP_MAGIC:
            return None
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        return None if bad is None else f'member {bad} fails its CRC check'
    except zipfile.BadZipFile as exc:
        return f'not a whole archive ({exc}): cut short?'
    except (OSError, EOFError, RuntimeError) as exc:
        return f'unreadable ({exc})'


def _candidates(work_dir: str) -> list[str]:
    """The checkpoints of ``work_dir``: the one ``last_checkpoint`` names first, then the ``.pth``
    files newest first."""
    named = []
    try:
        with open(os.path.join(work_dir, 'last_checkpoint'), encoding='utf-8') as f:
            last = f.read(4096).strip()
        if last:
            named.append(last if os.path.isabs(last) else os.path.join(work_dir, last))
    except (OSError, UnicodeDecodeError):
        pass
    try:
        found = [entry for entry in os.scandir(work_dir) if entry.name.endswith('.pth') and entry.is_file()]
    except OSError:
        found = []
    found.sort(key=lambda entry: entry.stat().st_mtime_ns, reverse=True)
    paths = named + [entry.path for entry in found]
    return list(dict.fromkeys(os.path.normpath(path) for path in paths))


def latest_whole_checkpoint(work_dir: str) -> str | None:
    """The newest checkpoint of ``work_dir`` that is whole (None: there is none at all; a fresh
    start). Each damaged one passed over is logged; ``NoCheckpoint`` when all are damaged."""
    passed_over = []
    for path in _candidates(work_dir):
        if not os.path.isfile(path):
            passed_over.append(f'{path}: named in last_checkpoint, but not there')
            continue
        why = damage(path)
        if why is None:
            for line in passed_over:
                logger.warning('not resuming from %s; resuming from the previous checkpoint, %s', line, path)
            return path
        passed_over.append(f'{path}: {why}')
    if passed_over:
        raise NoCheckpoint(f'no whole checkpoint in {work_dir} to resume from: ' + '; '.join(passed_over)
                           + '. Remove them to start afresh, or give another --work-dir')
    return None
