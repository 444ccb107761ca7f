"""The project's progress bars across fork (``src.datasets.progress``): a forked process killed
while it draws a bar does not stop every relative's bars for good (tqdm's own lock is shared by
forked processes), and a process forked while a thread of its parent draws one can draw its own."""
from __future__ import annotations

import io
import multiprocessing
import os
import signal
import threading

from src.datasets.progress import tqdm

FORK = multiprocessing.get_context('fork')


def _draw(total: int = 3) -> None:
    for _ in tqdm(range(total), file=io.StringIO(), mininterval=0):
        pass


def _die_holding_the_lock() -> None:
    tqdm.get_lock().acquire()  # as a bar being drawn holds it
    os.kill(os.getpid(), signal.SIGKILL)


def _finishes(target, timeout: float = 60.0) -> bool:
    """Whether ``target`` returns in a thread (a wait for a lock no one will release never does)."""
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive()


def test_a_relative_killed_while_drawing_leaves_the_bars_free():
    _draw()  # this process has drawn before: tqdm would have made its shared lock by now
    child = FORK.Process(target=_die_holding_the_lock)
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert _finishes(_draw)
    sibling = FORK.Process(target=_draw)
    sibling.start()
    sibling.join(60)
    assert sibling.exitcode == 0


def test_a_process_forked_while_a_parent_thread_draws_can_draw():
    held, forked = threading.Event(), threading.Event()

    def drawing() -> None:
        with tqdm.get_lock():  # a thread of the parent in the middle of drawing, at the fork
            held.set()
            forked.wait(60)

    thread = threading.Thread(target=drawing)
    thread.start()
    held.wait(60)
    child = FORK.Process(target=_draw)
    child.start()
    forked.set()
    thread.join(60)
    child.join(60)
    if child.exitcode is None:
        child.kill()
    assert child.exitcode == 0


def test_the_project_draws_its_bars_through_its_own_tqdm():
    """Every bar goes through ``src.datasets.progress`` (its lock), none through tqdm directly."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    direct = [str(path.relative_to(root)) for folder in ('src', 'tools') for path in (root / folder).rglob('*.py')
              if path.name != 'progress.py' and re.search(r'^\s*(from tqdm\b|import tqdm\b)', path.read_text(), re.M)]
    assert direct == []
