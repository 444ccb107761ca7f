"""What a preparation run did, as a summary a person can act on and as a small JSON report."""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field

from src.datasets.errors import WriteError
from src.datasets.storage.atomic import write_json

logger = logging.getLogger(__name__)

EXAMPLES_PER_REASON = 5
REPORT_NAME = 'prepare_report.json'


@dataclass
class Drops:
    """Things left out, counted by reason, with the first few names of each as examples."""

    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def add(self, reason: str, name: str) -> None:
        self.add_many(reason, [name])

    def add_many(self, reason: str, names: list[str], count: int | None = None) -> None:
        """Count ``count`` (default ``len(names)``) drops for ``reason``, named by the first few
        of ``names``."""
        count = len(names) if count is None else count
        if count:
            self.counts[reason] += count
            kept = self.examples.setdefault(reason, [])
            kept.extend(names[:EXAMPLES_PER_REASON - len(kept)])

    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {reason: {'count': n, 'examples': self.examples.get(reason, [])}
                for reason, n in sorted(self.counts.items())}

    def describe(self) -> str:
        return '; '.join(f'{reason} {n} (e.g. {", ".join(self.examples.get(reason, []))})'
                         for reason, n in sorted(self.counts.items()))


@dataclass
class IndexReport:
    """One index file the run wrote (or found unchanged)."""

    path: str
    entries: int = 0
    changed: bool = False
    drops: Drops = field(default_factory=Drops)
    remarks: Drops = field(default_factory=Drops)  # kept, but worth a look (counted like drops)
    note: str = ''

    def to_dict(self) -> dict:
        return {'path': self.path, 'entries': self.entries, 'changed': self.changed,
                'dropped': self.drops.to_dict(), 'remarks': self.remarks.to_dict(), 'note': self.note}


@dataclass
class Report:
    """Everything a run did. Tar results come from the runner, index results from the builders."""

    dataset: str
    root: str
    step: str = 'extract'
    tars_total: int = 0
    tar_slice: tuple[int, int] = (0, 0)
    tars: dict = field(default_factory=dict)  # tar name -> TarResult.to_dict() of this run or a marker
    skipped_done: list = field(default_factory=list)
    indexes: list = field(default_factory=list)
    index_skipped: str = ''
    index_error: str = ''
    download: dict | None = None  # the URL route (img2dataset): see src.prepare.recap.download_summary
    shared_paths: list = field(default_factory=list)  # paths several tars hold (the last tar's is kept)
    links: dict = field(default_factory=dict)  # path -> reason: tars, folders, files the link rule refused

    def add_index(self, path: str) -> IndexReport:
        index = IndexReport(path=path)
        self.indexes.append(index)
        return index

    def by_status(self, status: str) -> list[str]:
        return sorted(name for name, result in self.tars.items() if result['status'] == status)

    def refused(self) -> Drops:
        drops = Drops()
        for name, result in sorted(self.tars.items()):
            for member, reason in result['refused']:
                drops.add(reason, f'{name}:{member}')
        return drops

    def links_refused(self) -> Drops:
        """What the link rule refused (each path once, however many steps met it), by reason."""
        drops = Drops()
        for path, reason in sorted(self.links.items()):
            drops.add(reason, path)
        return drops

    def not_resized(self) -> Drops:
        """``--resize-to``: images kept as extracted, by reason."""
        drops = Drops()
        for name, result in sorted(self.tars.items()):
            for member, reason in result.get('not_resized', []):
                drops.add(reason, f'{name}:{member}')
        return drops

    def empty_indexes(self) -> list[str]:
        return [index.path for index in self.indexes if index.entries == 0]

    def exit_code(self) -> int:
        """1 when a tar could not be read (fully), an index input is unreadable, an index came out
        empty or URL shards are unfinished: the download must be repaired or the run repeated;
        else 0 (dropped index entries are warnings)."""
        unfinished = self.download is not None and self.download['shards_unfinished']
        return 1 if (self.by_status('failed') or self.by_status('partial') or self.index_error
                     or self.empty_indexes() or unfinished) else 0

    def to_dict(self) -> dict:
        return {
            'dataset': self.dataset, 'root': self.root, 'step': self.step, 'tars_total': self.tars_total,
            'slice': list(self.tar_slice), 'tars': self.tars, 'skipped_done': self.skipped_done,
            'members_refused': self.refused().to_dict(), 'not_resized': self.not_resized().to_dict(),
            'indexes': [index.to_dict() for index in self.indexes],
            'index_skipped': self.index_skipped, 'index_error': self.index_error,
            'download': self.download, 'shared_paths': self.shared_paths, 'exit_code': self.exit_code(),
            'links_refused': self.links_refused().to_dict(),
        }

    def summary(self) -> str:
        now = [r for name, r in self.tars.items() if name not in self.skipped_done]
        statuses = Counter(r['status'] for r in now)
        start, end = self.tar_slice
        lines = [f'{self.dataset} at {self.root}']
        if self.download is not None:
            lines += download_lines(self.download)
        if self.tars_total or self.download is None:
            lines += [
                f'tars: {self.tars_total} in total, {end - start} in this run (sorted tar list [{start}:{end}]): '
                f'{len(now)} processed now ({statuses["done"]} done, {statuses["partial"]} partial, '
                f'{statuses["failed"]} failed), {len(self.skipped_done)} skipped (done by an earlier run)',
                f'members ({self.step}): {sum(r["members"] for r in now)} by this run',
            ]
        refused = self.refused()
        if refused.total():
            lines.append(f'unsafe members refused (never written): {refused.total()}: {refused.describe()}')
        links = self.links_refused()
        if links.total():
            lines.append(f'symbolic links out of {self.root} refused (nothing read, listed or written through '
                         f'them): {links.total()}: {links.describe()}')
        kept = self.not_resized()
        if kept.total():
            lines.append(f'images kept as extracted, not resized (the dataset judges them when it reads them): '
                         f'{kept.total()}: {kept.describe()}')
        if self.shared_paths:
            lines.append(f'{len(self.shared_paths)} paths are in more than one tar: the last tar\'s copy (in tar '
                         f'order) is kept, as with --no-extract; e.g. {", ".join(self.shared_paths[:5])}')
        for name in self.by_status('partial'):
            r = self.tars[name]
            lines.append(f'PARTIAL {name}: {r["error"]}; the members before it were kept. '
                         'Download this tar again, then re-run.')
        for name in self.by_status('failed'):
            result = self.tars[name]
            advice = ('The tar itself is fine: free space or make the folder writable, then re-run.'
                      if result.get('cause') == 'storage' else 'Download this tar again, then re-run.')
            lines.append(f'FAILED {name}: {result["error"]}. {advice}')
        for index in self.indexes:
            state = 'written' if index.changed else 'unchanged'
            lines.append(f'index {index.path}: {index.entries} entries ({state})'
                         + (f'; {index.note}' if index.note else ''))
            if index.drops.total():
                lines.append(f'  dropped {index.drops.total()}: {index.drops.describe()}')
            if index.remarks.total():
                lines.append(f'  kept, but note {index.remarks.total()}: {index.remarks.describe()}')
            if index.entries == 0:
                lines.append('  EMPTY INDEX: no usable sample was found; the config would have nothing to read. '
                             'Check the download and the drops above.')
        if self.index_skipped:
            lines.append(f'index not built: {self.index_skipped}')
        if self.index_error:
            lines.append(f'INDEX NOT BUILT: {self.index_error}')
        return '\n'.join(lines)

    def finish(self) -> int:
        """Log the summary, write ``<root>/prepare_report.json``; return the exit code."""
        path = os.path.join(self.root, REPORT_NAME)
        try:
            write_json(path, self.to_dict())
            saved = f'report: {path}'
        except OSError as e:  # a full disk or a read-only root: the summary is still printed
            saved = f'report not saved: {e}' if isinstance(e, WriteError) else f'report not saved ({e.strerror}: {path})'
        code = self.exit_code()
        log = logger.warning if code else logger.info
        log('%s\n%s', self.summary(), saved)
        return code


def download_lines(download: dict) -> list[str]:
    """The summary lines of a URL download (img2dataset's per-shard stats, added up)."""
    failed = download['failed_by_reason']
    lines = [f'download (img2dataset, {download["distributor"]}): {download["urls"]} URLs in '
             f'{download["shards_total"]} shards; {download["shards_now"]} shards downloaded now, '
             f'{download["shards_earlier"]} done by an earlier run (not downloaded again)',
             f'  images downloaded: {download["successes"]}; failed: {sum(failed.values())}'
             + (f' ({"; ".join(f"{reason} {n}" for reason, n in sorted(failed.items()))})' if failed else '')]
    if download['shards_unfinished']:
        lines.append(f'UNFINISHED: {len(download["shards_unfinished"])} shards have no stats (e.g. '
                     f'{download["shards_unfinished"][0]}): img2dataset gave up on them or was stopped. '
                     'Re-run the same command: finished shards are kept and only these are fetched.')
    return lines
