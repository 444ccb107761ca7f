"""Runs a per-tar step over a dataset's tar shards in parallel, resumably, then builds its index.

Resume works like img2dataset's per-shard ``_stats.json``: after a tar is processed, a small marker
``<root>/.prepare/<step>/<tar>.done.json`` records the tar's size and mtime and what it gave. A
later run skips tars whose marker matches, and redoes any tar without one (never finished, or
failed) or whose file changed since.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable

from src.cli.logs import setup_logging
from src.datasets.errors import IndexFormatError, SampleError
from src.datasets.extras import MissingExtra
from src.datasets.progress import tqdm
from src.datasets.storage.files import link_outside, read_text_file
from src.datasets.storage.atomic import write_json
from src.datasets.storage import locks as lock
from src.datasets.storage.cleanup import remove_empty_folders, remove_leftovers
from src.prepare.extract import EXTRACT, Extract, storage_problem
from src.prepare.listing import PathListing
from src.prepare.tar_headers import TarJob, TarResult, file_signature
from src.prepare.report import Report
from src.prepare.tar_members import INDEX_MEMBERS

logger = logging.getLogger(__name__)

DEFAULT_NUM_PROCESSES = min(8, os.cpu_count() or 1)
INDEX_WAIT = 3 * 3600.0  # seconds a run waits for another run's index build before giving up
BUSY_POLL = 1.0


@dataclass
class Files:
    """The files an index builder may use: ``paths`` (relative to ``root``) and their bytes.

    They come from the step: a folder scan after extraction, or tar member names without it.
    """

    root: str
    paths: PathListing
    step: object

    def __contains__(self, path: str) -> bool:
        return path in self.paths

    def read(self, path: str) -> bytes:
        return self.step.read(self.root, path)


IndexBuilder = Callable[[Files, Report], None]


def marker_path(job: TarJob, step_name: str) -> str:
    return os.path.join(job.root, '.prepare', step_name, job.name + '.done.json')


def tar_signature(job: TarJob, step) -> dict:
    """The tar as it is now, where it goes and the step's options (another --resize-to redoes it)."""
    return {**file_signature(job.path), 'dest': job.dest, **getattr(step, 'options', {})}


MAX_MARKER_BYTES = 1 << 20


def read_marker(path: str):
    """A marker or stats file's JSON, read through the project's bounded regular-file reader (a
    FIFO or device planted in its place is never opened for a blocking read), or None when it is
    absent, not a regular file, too large or not JSON."""
    try:
        return json.loads(read_text_file(path, MAX_MARKER_BYTES))
    except (SampleError, ValueError):
        return None


def links_out(root: str, folders=('.prepare',)) -> str:
    """The link rule for the folders a run writes its state and downloads into: '' when each of
    ``folders`` (under ``root``) stays inside it, else why nothing is written there."""
    for folder in folders:
        path = os.path.join(root, folder)
        if link_outside(path, root):
            return (f'{path} is a symbolic link out of {root}: nothing is written through it '
                    '(remove it, then re-run)')
    return ''


def finished_result(job: TarJob, step) -> dict | None:
    """The recorded result of ``step`` on ``job`` when its marker matches the tar as it is now, else None."""
    try:
        marker = read_marker(marker_path(job, step.name))
        current = tar_signature(job, step)
    except (OSError, ValueError):
        return None  # the tar is gone: not finished
    return marker.get('result') if isinstance(marker, dict) and marker.get('tar') == current else None


def recorded_options(job: TarJob, step) -> dict | None:
    """The step options (``--resize-to``) a finished earlier run recorded for ``job``, or None."""
    try:
        recorded = read_marker(marker_path(job, step.name))['tar']
        return {key: value for key, value in recorded.items() if key not in ('size', 'mtime_ns', 'dest')}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def options_conflict(jobs: list[TarJob], step) -> str:
    """Why ``step``'s options cannot be used on this root: tars an earlier run (maybe another
    slice) prepared with other ones, which would leave the root half one way and half the other."""
    wanted = getattr(step, 'options', {})
    others = {}
    for job in jobs:
        recorded = recorded_options(job, step)
        if recorded is not None and recorded != wanted:
            others.setdefault(json.dumps(recorded, sort_keys=True), []).append(job.name)
    if not others:
        return ''
    recorded, names = next(iter(others.items()))
    return (f'{len(names)} tars of this root were prepared with {describe_options(json.loads(recorded))} '
            f'(e.g. {names[0]}), and this run asks for {describe_options(wanted)}: run with the same option, '
            f'or remove the extracted files and {os.path.join(jobs[0].root, ".prepare")} to prepare again')


def describe_options(options: dict) -> str:
    return ' '.join(f'--{key.replace("_", "-")} {value}' for key, value in sorted(options.items())) or 'no --resize-to'


def process_and_mark(step, job: TarJob) -> TarResult:
    """Run ``step`` on one tar; record a marker unless it failed (a failed tar is retried). A tar
    another live run has claimed is left to it: status 'busy', its holder in ``error``."""
    try:
        signature = tar_signature(job, step)
    except OSError as e:
        return TarResult(name=job.name, status='failed', error=f'cannot read {job.path}: {e}')
    try:
        with lock.held(lock.tar_claim_path(job.root, job.name)):
            if finished_result(job, step) is not None:  # done by another run meanwhile
                return TarResult(name=job.name, status='busy', error='finished by another run')
            result = step.process(job)
            if result.status != 'failed':
                write_json(marker_path(job, step.name), {'tar': signature, 'result': result.to_dict()})
    except lock.Busy as busy:
        return TarResult(name=job.name, status='busy', error=f'being processed by another run ({busy.holder.describe()})')
    except OSError as e:
        problem = storage_problem(e)
        if problem is None:
            raise
        return TarResult(name=job.name, status='failed', cause='storage',
                         error=f'cannot record {job.name} as done ({problem}: {e})')
    return result


def _process_in_worker(args) -> TarResult:
    return process_and_mark(*args)


def select_slice(jobs: list, start: int, end: int) -> tuple[int, int]:
    """``[start:end]`` of the sorted tar list as the guides take it (``end == -1``: to the end)."""
    end = len(jobs) if end == -1 else min(end, len(jobs))
    start = min(max(start, 0), end)
    return start, end


def prepare(dataset: str, root: str, jobs: list[TarJob], folders: list[str], build_index: IndexBuilder, *,
            looked_for: str = 'tars', num_processes: int = DEFAULT_NUM_PROCESSES, start: int = 0, end: int = -1,
            step=EXTRACT, report: Report | None = None) -> Report:
    """Process ``jobs[start:end]`` with ``step`` on ``num_processes`` processes, skipping tars done
    earlier, then, once no tar of the whole list is waiting any more (another machine may still be
    on its slice), build the index from the files under ``folders`` (relative to ``root``).
    ``looked_for`` says what input the tars were searched as: with no tar and no file under
    ``folders`` there is nothing to prepare, and the report says so (an error, not an empty index).
    Returns the report (``report``, when given, is filled in); ``report.finish()`` prints and saves it."""
    report = report or Report(dataset=dataset, root=root)
    report.index_error = links_out(root)  # markers, claims and staging live in .prepare
    if report.index_error:
        return report
    jobs = [job for job in jobs if not linked_out(job, report)]
    start, end = select_slice(jobs, start, end)
    report.step, report.tars_total, report.tar_slice = step.name, len(jobs), (start, end)
    report.index_error = options_conflict(jobs, step)
    if report.index_error:
        return report
    todo = _not_done(jobs[start:end], step, report)
    remove_leftovers(root)
    _run(dataset, todo, jobs, step, num_processes, report)
    remove_empty_folders(os.path.join(root, '.prepare', 'staging'))  # what the tars' staging left

    waiting = [job.name for job in jobs if job.name not in report.tars
               and finished_result(job, step) is None]
    if waiting:
        report.index_skipped = (f'{len(waiting)} tars outside this run are not done yet (e.g. {waiting[0]}); '
                                'the run that finishes the last one builds it')
    else:
        _index(root, jobs, folders, build_index, step, looked_for, report)
    return report


def _not_done(jobs: list[TarJob], step, report: Report) -> list[TarJob]:
    """The jobs ``step`` has not finished yet; the finished ones' results go to the report as skipped."""
    todo = []
    for job in jobs:
        earlier = finished_result(job, step)
        if earlier is None:
            todo.append(job)
        else:
            report.tars[job.name] = earlier
            report.skipped_done.append(job.name)
    return todo


def _run(dataset: str, todo: list[TarJob], jobs: list[TarJob], step, num_processes: int, report: Report) -> None:
    """``step`` on every job of ``todo``, in parallel, with a progress bar; a tar another run holds is
    waited for (and taken over if that run died) until none is left."""
    with tqdm(total=len(todo), unit='tar', desc=f'{dataset}: {step.name}', disable=not jobs) as bar:
        members = 0
        while todo:
            busy = []
            for result in run_parallel(step, todo, num_processes):
                if result.status == 'busy':
                    busy.append(result)
                    continue
                report.tars[result.name] = result.to_dict()
                members += result.members
                bar.set_postfix(members=members, refresh=False)
                bar.update()
                if result.status != 'done':
                    logger.warning('%s: %s: %s', result.name, result.status, result.error)
            todo = wait_for_others(busy, jobs, step, report, bar)


def _index(root: str, jobs: list[TarJob], folders: list[str], build_index: IndexBuilder, step, looked_for: str,
           report: Report) -> None:
    """The index of the files under ``folders``, built once every tar is done, by one run at a time;
    what stops it goes to ``report.index_error``."""
    if hasattr(step, 'settle'):
        report.shared_paths = step.settle(root, jobs, report.tars)
    files = Files(root, step.listing(root, jobs, folders, refused=report.links), step)
    if not jobs and not files.paths:
        report.index_error = (f'nothing to prepare in {os.path.abspath(root)}: no {looked_for}, and no '
                              f'files in {", ".join(f + "/" for f in folders)}. Is --root the folder '
                              'the download went to?')
        return
    try:
        with lock.held(lock.index_claim_path(root), wait=INDEX_WAIT, on_wait=lambda busy: logger.warning(
                'waiting for another run to finish building the index (%s)', busy.holder.describe())):
            build_index(files, report)
    except IndexFormatError as e:
        report.index_error = str(e)
    except lock.Busy as busy:
        report.index_error = (f'another run has been building the index for over {INDEX_WAIT:.0f} s '
                              f'({busy.holder.describe()}): re-run once it is done')
    except OSError as e:
        problem = storage_problem(e)
        if problem is None:
            raise
        report.index_error = (f'cannot write the index: {problem} ({e}). Free space or make the folder '
                              'writable, then re-run: every finished tar is kept')


def linked_out(job: TarJob, report: Report) -> bool:
    """Whether the tar, or the folder it extracts into, leads out of the dataset's folder through a
    symbolic link (the link rule, ``src.datasets.storage.files.link_outside``): then it is neither read
    nor extracted, and the report names it."""
    for path, what in ((job.path, job.name), (os.path.join(job.root, job.dest), job.dest)):
        if link_outside(path, job.root):
            report.links[what] = 'link-outside'
            return True
    return False


def wait_for_others(busy: list[TarResult], jobs: list[TarJob], step, report: Report, bar) -> list[TarJob]:
    """The tars to try again once others that live runs held are released: those runs' finished
    tars count as skipped (done by another run), and a tar whose run died is taken over."""
    if not busy:
        return []
    holders = sorted({result.error for result in busy if result.error != 'finished by another run'})
    if holders:
        logger.warning('%d tars are held by another run, waiting for them: %s', len(busy), '; '.join(holders))
    pending = {result.name for result in busy}
    by_name = {job.name: job for job in jobs}
    while True:
        for name in sorted(pending):
            earlier = finished_result(by_name[name], step)
            if earlier is not None:
                report.tars[name] = earlier
                report.skipped_done.append(name)
                bar.update()
                pending.discard(name)
        unclaimed = [name for name in sorted(pending) if lock.is_free(lock.tar_claim_path(report.root, name))]
        if unclaimed or not pending:
            return [by_name[name] for name in unclaimed]
        time.sleep(BUSY_POLL)


def run_parallel(step, jobs: list[TarJob], num_processes: int):
    """Yield each job's result as it finishes (in this process when one process is enough)."""
    if num_processes <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield process_and_mark(step, job)
        return
    with multiprocessing.Pool(min(num_processes, len(jobs)), initializer=_ignore_interrupts) as pool:
        yield from pool.imap_unordered(_process_in_worker, [(step, job) for job in jobs])


def _ignore_interrupts() -> None:
    """Ctrl-C reaches every process of the terminal's group: the workers leave it to the parent,
    which stops them (the pool's exit terminates them), instead of each printing a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def tool_parser(description: str, default_root: str) -> argparse.ArgumentParser:
    """The options every tools/prepare_<name>.py shares."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--root', default=default_root,
                        help='the dataset folder as the download left it (default: %(default)s)')
    parser.add_argument('--num-processes', type=int, default=DEFAULT_NUM_PROCESSES,
                        help='tars processed in parallel (default: %(default)s)')
    parser.add_argument('--start', type=int, default=0, help='first tar of the sorted tar list')
    parser.add_argument('--end', type=int, default=-1, help='end of the slice, -1 = all (default)')
    parser.add_argument('--no-extract', action='store_true',
                        help='leave the tars packed: index their members into <root>/tar_index.arrow '
                             "instead, and set the dataset config's tar_index to that file")
    parser.add_argument('--resize-to', type=int, metavar='N',
                        help='extract images resized so that their short side is N (those larger only), '
                             'for training at one resolution: same paths and crops, less to decode')
    return parser


def run_options(args: argparse.Namespace) -> dict:
    if args.no_extract and args.resize_to:
        raise SystemExit('--resize-to writes resized files: it cannot be used with --no-extract')
    step = INDEX_MEMBERS if args.no_extract else Extract(resize_to=args.resize_to) if args.resize_to else EXTRACT
    return dict(root=args.root, num_processes=args.num_processes, start=args.start, end=args.end, step=step)


def run_tool(prepare_fn: Callable[..., Report], args: argparse.Namespace, **options) -> int:
    """Run a tool's ``prepare_fn`` with the shared and the tool's own options; return the exit code
    (130 after Ctrl-C, with one line saying what was kept)."""
    setup_logging()
    if not os.path.isdir(args.root):
        logger.error('%s is not a folder: pass --root, or run from the folder that holds data/', args.root)
        return 2
    run = run_options(args)
    try:
        return prepare_fn(**run, **options).finish()
    except KeyboardInterrupt:
        done = glob.glob(os.path.join(glob.escape(args.root), '.prepare', run['step'].name, '**', '*.done.json'),
                         recursive=True)
        print(f'\ninterrupted: {len(done)} tars are done and kept (their markers are in '
              f'{os.path.join(args.root, ".prepare", run["step"].name)}); run the same command again to go on '
              'with the rest', file=sys.stderr)
        return 130
    except MissingExtra as e:
        logger.error('%s', e)
        return 2
