"""A real full disk for tests: a tiny tmpfs mounted on a folder (root can mount one; elsewhere the
tests that need it are skipped, with the reason)."""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def tiny_disk(folder: Path, size_kib: int = 256):
    """``folder`` as a file system of ``size_kib`` KiB, unmounted at the end."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size_kib}k', 'tmpfs', str(folder)],
                             capture_output=True, text=True) if os.geteuid() == 0 else None
    if mounted is None or mounted.returncode:
        pytest.skip('a small tmpfs cannot be mounted here (needs root): '
                    + ('not root' if mounted is None else mounted.stderr.strip()))
    try:
        yield folder
    finally:
        subprocess.run(['umount', '-l', str(folder)], check=True)


def fill(folder: Path, leave: int = 0) -> None:
    """Fill the file system of ``folder`` up to ``leave`` free bytes."""
    with open(folder / 'filler', 'wb') as f:
        free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize - leave
        with contextlib.suppress(OSError):
            f.write(b'\0' * max(free, 0))
            f.flush()
