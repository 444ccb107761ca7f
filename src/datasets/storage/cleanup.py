"""What runs killed midway leave in a dataset root or a latent folder, removed by the next run: the
temporary files of atomic writes (a ``data.json.tmp-<host>-<pid>`` can be gigabytes, a latent folder
holds one per latent being written), and staging folders of tars no live run is working on. A temp
file is left over when its writer is gone: on this host its pid no longer runs; from another host it
has not grown for ``lock.STALE_AFTER`` seconds."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time

from src.datasets.storage import locks as lock
from src.datasets.storage.atomic import TEMP_MARK

logger = logging.getLogger(__name__)

# <name>.tmp-<host>-<pid>, or <name>.tmp-<pid> as earlier versions named them
_TEMP = re.compile(re.escape(TEMP_MARK) + r'(?:(?P<host>.+)-)?(?P<pid>\d+)$')


def _writer_gone(path: str, host: str | None, pid: int) -> bool:
    if host in (None, lock.HOST):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    try:
        return time.time() - os.stat(path).st_mtime > lock.STALE_AFTER
    except FileNotFoundError:
        return False


def _temp_files(folders):
    for folder in folders:
        with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
            for entry in entries:
                match = _TEMP.search(entry.name)
                if match and entry.is_file(follow_symlinks=False):
                    yield entry.path, match.group('host'), int(match.group('pid'))


def _remove_dead_temp_files(folders, top: str) -> list[str]:
    """Remove the temp files in ``folders`` whose writer is gone; their paths relative to ``top``."""
    removed = []
    for path, host, pid in _temp_files(folders):
        if pid != os.getpid() and _writer_gone(path, host, pid):
            with contextlib.suppress(OSError):
                os.remove(path)
                removed.append(os.path.relpath(path, top))
    return removed


def _log(removed: list[str], where: str) -> None:
    if removed:
        logger.info('removed %d leftovers of interrupted runs from %s (e.g. %s)', len(removed), where,
                    ', '.join(removed[:3]))


def remove_temp_leftovers(top: str) -> int:
    """Remove the temp files of killed writers anywhere under ``top`` (a latent folder: a ``.pt``
    killed midway leaves ``<image>.pt.tmp-<host>-<pid>`` beside where it was to go); how many went."""
    removed = _remove_dead_temp_files((folder for folder, _, _ in os.walk(top)), top)
    _log(removed, top)
    return len(removed)


def remove_leftovers(root: str) -> None:
    """Remove the leftovers of killed runs under ``root``; log what went."""
    # temp files in the root itself and anywhere under .prepare/ (markers, indexes, claims)
    folders = [root] + [folder for folder, _, _ in os.walk(os.path.join(root, '.prepare'))]
    removed = _remove_dead_temp_files(folders, root)
    staging = os.path.join(root, '.prepare', 'staging')
    for step_dir in _subfolders(staging):
        for folder, subfolders, _ in os.walk(step_dir, topdown=True):
            for name in list(subfolders):
                if name.endswith('.tar'):
                    subfolders.remove(name)  # a tar's staging folder: not walked into
                    tar_name = os.path.relpath(os.path.join(folder, name), step_dir)
                    claim = lock.tar_claim_path(root, tar_name)
                    if lock.is_free(claim):
                        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
                        removed.append(f'.prepare/staging/{os.path.basename(step_dir)}/{tar_name}/')
    remove_empty_folders(staging)
    _log(removed, root)


def _subfolders(path: str) -> list[str]:
    with contextlib.suppress(FileNotFoundError):
        return [entry.path for entry in os.scandir(path) if entry.is_dir(follow_symlinks=False)]
    return []


def remove_empty_folders(top: str) -> None:
    """Remove ``top`` and the folders under it that are empty (bottom up)."""
    for folder, _, _ in os.walk(top, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(folder)  # only succeeds when empty
