"""When a dataset gives up: the bound on replacing samples that cannot be used.

Upstream retries a failed sample forever; a bound on the streak alone (``max_refetch`` failures in a
row) ends long runs by chance: at a 38% failure rate, 11 in a row happen about 24 times in a million
draws. So a streak only ends a run when the failure rate itself is too high: the share of failed
samples among the last :data:`WINDOW` tried in this process must exceed ``max_failure_ratio`` beyond
doubt (the lower end of its Wilson interval at :data:`Z` standard errors, which a rate at or below
the ratio reaches about once in a billion looks), or every one of them must have failed. Every
failure keeps counting, so a streak that goes on always ends: either a sample works or the rate
passes the bound. A dataset that really fails (a wrong folder, storage gone) stops within
:data:`MIN_ATTEMPTS` to a few hundred draws, with the counts by reason and the last messages.
"""
from __future__ import annotations

import logging
import math
import re
from collections import Counter, deque

from mmengine.logging import print_log

from src.datasets.errors import SampleError

WINDOW = 1000  # the recent draws the failure rate is judged on: a storage outage shows at once
MIN_ATTEMPTS = 50  # draws before the rate is judged at all
Z = 6.0
LOG_FIRST_FAILURES = 20  # then every LOG_EVERY_FAILURES-th, with the running counts
LOG_EVERY_FAILURES = 100
RECENT_MESSAGES = 5
_DRAW = re.compile(r'#(Draw\([^)]*\)|\d+)')  # the draw in a message: the same file fails on every draw


def wilson_lower_bound(failures: int, attempts: int, z: float = Z) -> float:
    """The lower end of the Wilson score interval of a rate ``failures / attempts``."""
    if attempts == 0:
        return 0.0
    rate, z2 = failures / attempts, z * z
    centre = rate + z2 / (2 * attempts)
    spread = z * math.sqrt(rate * (1 - rate) / attempts + z2 / (4 * attempts * attempts))
    return (centre - spread) / (1 + z2 / attempts)


class FailureTracker:
    """One process's record of draws: failures by reason, the recent window, the last messages.

    ``source`` names the dataset in messages; ``max_refetch`` is the streak after which a warning
    says that the draw goes on; ``max_failure_ratio`` is the failure rate a run accepts.
    """

    def __init__(self, source: str, max_refetch: int, max_failure_ratio: float):
        self.source = source
        self.max_refetch = max_refetch
        self.max_failure_ratio = max_failure_ratio
        self.failures: Counter = Counter()
        self.attempts = 0
        self.recent = deque(maxlen=RECENT_MESSAGES)
        self._window = deque(maxlen=WINDOW)
        self._window_failures = 0
        self._logged = set()  # the failures already logged (message less the draw): repeats are counted
        self._repeats = 0  # failures not logged since the last line
        self._streak_said = False

    def _record(self, failed: bool) -> None:
        self.attempts += 1
        if len(self._window) == WINDOW:
            self._window_failures -= self._window[0]
        self._window.append(failed)
        self._window_failures += failed

    def success(self) -> None:
        self._record(False)

    def failure(self, err: SampleError, streak: int) -> None:
        """Count one failed draw (the ``streak``-th in a row of one ``__getitem__``); log it; raise
        ``RuntimeError`` when the run must stop."""
        self._record(True)
        self.failures[err.reason] += 1
        self.recent.append(f'[{err.reason}] {err}')
        self._log(err, streak)
        window = len(self._window)
        every_one = window >= MIN_ATTEMPTS and self._window_failures == window
        too_many = (window >= MIN_ATTEMPTS
                    and wilson_lower_bound(self._window_failures, window) > self.max_failure_ratio)
        if every_one or too_many:
            why = ('every one of them failed' if every_one else
                   f'a failure rate above max_failure_ratio={self.max_failure_ratio} beyond doubt')
            raise RuntimeError(
                f'{self.source}: {self._window_failures} of the last {window} samples tried in this process '
                f'could not be used ({why}); by reason, over all {self.attempts} tried: {dict(self.failures)}. '
                'Check image_folder / cap_folder / cap_source and the storage. Last errors:\n  '
                + '\n  '.join(self.recent))

    def _log(self, err: SampleError, streak: int) -> None:
        """The first failure of each sample (file) is logged, up to LOG_FIRST_FAILURES, then every
        LOG_EVERY_FAILURES-th; a repeat of one already logged is only counted, and the count is said
        with the next line."""
        failed = sum(self.failures.values())
        key = _DRAW.sub('#', f'[{err.reason}] {err}')
        new = key not in self._logged and len(self._logged) < LOG_FIRST_FAILURES
        if new or failed % LOG_EVERY_FAILURES == 0:
            self._logged.add(key)
            repeats = f', {self._repeats} of them repeats not logged' if self._repeats else ''
            counts = f' ({failed} skipped so far in this process{repeats}: {dict(self.failures)})' if failed > 1 else ''
            quieter = (f'; from now on every {LOG_EVERY_FAILURES}th skip is logged'
                       if len(self._logged) == LOG_FIRST_FAILURES and new else
                       '; this sample failing again is counted, not logged' if new else '')
            print_log(f'Skipped a sample [{err.reason}]: {err}{counts}{quieter}',
                      logger='current', level=logging.WARNING)
            self._repeats = 0
        else:
            self._repeats += 1
        if streak == self.max_refetch + 1 and not self._streak_said:
            self._streak_said = True  # once a process: the counts come with the skips' lines
            window, failures = len(self._window), self._window_failures
            if window < MIN_ATTEMPTS:
                judged = (f'the failure rate is judged once {MIN_ATTEMPTS} samples have been tried '
                          f'({window} so far, {failures} failed)')
            elif failures / window > self.max_failure_ratio:
                judged = (f'the recent failure rate {failures / window:.0%} ({failures} of {window}) is above '
                          f'max_failure_ratio={self.max_failure_ratio}, not yet beyond doubt')
            else:
                judged = (f'the recent failure rate {failures / window:.0%} ({failures} of {window}) is within '
                          f'max_failure_ratio={self.max_failure_ratio}')
            print_log(f'{self.source}: {streak} samples in a row could not be used (max_refetch={self.max_refetch}); '
                      f'{judged}, so drawing goes on', logger='current', level=logging.WARNING)
