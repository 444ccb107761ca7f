"""Memory of the current process, for benchmarks: peak RSS of one phase, and USS/PSS at a point.

Peak RSS comes from VmHWM (the high-water mark of this process's own address space, which unlike
``ru_maxrss`` does not inherit the parent's peak across fork+exec); ``reset_peak`` lowers the mark
to the current RSS so that a phase's peak can be measured on its own.
"""
from __future__ import annotations

import psutil

MiB = 2 ** 20


def _status_kib(field: str, pid: int | str = 'self') -> int:
    with open(f'/proc/{pid}/status') as status:
        for line in status:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'/proc/{pid}/status has no {field} (a process that has exited)')


def reset_peak() -> int:
    """Lowers the peak RSS to the current RSS (Linux clear_refs 5); returns that RSS in bytes."""
    with open('/proc/self/clear_refs', 'w') as clear_refs:
        clear_refs.write('5')
    return _status_kib('VmRSS') * 1024


def peak_rss(pid: int | str = 'self') -> int:
    """The highest RSS of this process (or of process ``pid``) since it started or since
    ``reset_peak``, in bytes."""
    return _status_kib('VmHWM', pid) * 1024


def private_and_proportional(pid: int | None = None) -> tuple[int, int]:
    """(USS, PSS) of this process (or of process ``pid``) in bytes: memory only it holds, and its
    share of what it holds."""
    info = psutil.Process(pid).memory_full_info()
    return info.uss, info.pss
