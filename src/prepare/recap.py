"""The URL route of laion6m and redcaps5m, as upstream ships them today: URL + caption parquets in
``<root>/parquets/``, images fetched with img2dataset into ``<root>/raw/<shard>/<key>.jpg`` beside
``<key>.json`` (the parquet's other columns, ``re_caption`` among them), and ``<root>/data.json`` of
``{"image": "<shard>/<key>.jpg", "annotation": "<shard>/<key>.json"}``.

img2dataset does the downloading (its multiprocessing distributor, or pyspark for a cluster) and
its resume: a shard with a ``<shard>_stats.json`` is finished and never fetched again (incremental
mode). Its per-shard stats are also where the summary's failure counts come from. With
``--no-extract`` the shards are webdataset tars (``raw/<shard>.tar``) indexed in place, whose
members have the same paths as the files layout: one ``data.json`` serves both.
"""
from __future__ import annotations

import glob
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from functools import partial

import pyarrow.parquet as pq

from src.datasets.errors import IndexFormatError
from src.datasets.extras import MissingExtra, check
from src.datasets.progress import tqdm
from src.datasets.storage.atomic import write_json
from src.prepare.extract import EXTRACT
from src.prepare.tar_headers import TarJob
from src.prepare.pairs import PairLayout, build_pair_index
from src.prepare.report import Report
from src.prepare.runner import DEFAULT_NUM_PROCESSES, Files, links_out, prepare, read_marker
from src.prepare.tar_members import INDEX_MEMBERS
from src.prepare.url_fetch import UrlPolicy

PARQUET_FOLDER = 'parquets'
IMAGE_FOLDER = 'raw'
LAYOUT = PairLayout(index='data.json', image_folder=IMAGE_FOLDER, cap_folder=IMAGE_FOLDER,
                    caption_folders=(IMAGE_FOLDER,), caption_ext='.json')
DISTRIBUTORS = ('multiprocessing', 'pyspark')
SHARD_DIGITS = 5  # img2dataset's oom_shard_count: shard names are 00000, 00001, ...
RESERVED_COLUMNS = {'key', 'caption', 'url', 'width', 'height', 'original_width', 'original_height', 'status',
                    'error_message', 'exif', 'md5', 'sha256', 'sha512'}  # img2dataset's own json keys

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DownloadOptions:
    """What the tools pass to img2dataset; the defaults keep every image as downloaded (no resize)."""

    url_col: str = 'url'
    distributor: str = 'multiprocessing'
    thread_count: int = 64
    timeout: int = 10
    retries: int = 0
    samples_per_shard: int = 10_000
    allow_local_urls: bool = False  # loopback and private addresses: a test server, a local mirror
    max_bytes: int = 64 << 20  # per image downloaded

    def url_policy(self) -> UrlPolicy:
        """The URL rule's bounds: ``timeout`` is each download's whole time, redirects included."""
        return UrlPolicy(allow_local=self.allow_local_urls, timeout=self.timeout, max_bytes=self.max_bytes)


def find_parquets(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, PARQUET_FOLDER, '*.parquet')))


def input_columns(parquets: list[str], url_col: str) -> list[str]:
    """The columns kept in each sample's json: every column but the URL, which every file must have."""
    first = None
    for path in parquets:
        try:
            names = pq.read_schema(path).names
        except Exception as e:  # pyarrow raises several types for a file that is not parquet
            raise IndexFormatError(f'{path}: not a readable parquet file: {e}') from None
        if url_col not in names:
            raise IndexFormatError(f'{path}: no URL column {url_col!r}; its columns are {names}. '
                                   'Name the URL column with --url-col.')
        if first is None:
            first = names
        elif set(names) != set(first):
            raise IndexFormatError(f'{path}: columns {names} differ from those of {parquets[0]} ({first})')
    return [name for name in first if name != url_col]


def parquet_rows(path: str, url_col: str) -> int:
    """The rows of ``path`` as img2dataset will read them, which must be those its footer states: a
    footer claiming more (2^31 rows for three) would have this run wait for shards that never come."""
    try:
        parquet = pq.ParquetFile(path)
        claimed = parquet.metadata.num_rows
        if url_col not in parquet.schema_arrow.names:
            return claimed  # input_columns names the missing column
        read = sum(batch.num_rows for batch in parquet.iter_batches(batch_size=1 << 16, columns=[url_col]))
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise IndexFormatError(f'{path}: not a readable parquet file: {e}') from None
    if read != claimed:
        raise IndexFormatError(f'{path}: its footer claims {claimed} rows but it holds {read}: a damaged or '
                               'forged parquet; nothing was downloaded. Remove it, or fetch it again.')
    return read


def shard_names(rows: list[int], samples_per_shard: int) -> list[str]:
    """Every shard img2dataset makes of parquets of ``rows`` rows each: each file is cut into shards
    of ``samples_per_shard`` rows, numbered on across the files in name order (as its reader does)."""
    count = sum(math.ceil(n / samples_per_shard) for n in rows)
    return [f'{shard:0{SHARD_DIGITS}d}' for shard in range(count)]


def finished_shards(output: str) -> set[str]:
    return {name[:-len('_stats.json')] for name in os.listdir(output) if name.endswith('_stats.json')} \
        if os.path.isdir(output) else set()


# img2dataset runs in a process of its own: its advice lines, per-worker statistics and progress
# bars (and Spark's log) would otherwise interleave with this tool's lines. What it did is read from
# its per-shard stats files, and the bar here counts them as they appear.
# Every URL goes through the URL rule (src.prepare.url_fetch), whatever img2dataset would fetch.
_DOWNLOAD = ('import json, sys\nfrom src.prepare.url_download import download\n'
             'from src.prepare.url_fetch import UrlPolicy\n'
             'download(UrlPolicy(**json.loads(sys.argv[2])), json.loads(sys.argv[1]))\n')
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POLL_SECONDS = 0.5


def run_img2dataset(parquets: list[str], output: str, output_format: str, options: DownloadOptions,
                    num_processes: int, shards: list[str]) -> None:
    """Download what is missing of ``shards`` (img2dataset's incremental mode), with a progress bar."""
    check('img2dataset')
    if options.distributor == 'pyspark':
        check('pyspark')
    columns = input_columns(parquets, options.url_col)
    # img2dataset writes these keys itself; 'caption' it takes as its caption column instead.
    skipped = [name for name in columns if name in RESERVED_COLUMNS and name != 'caption']
    if skipped:
        logger.warning('columns %s of the parquets are not kept in the json: img2dataset writes its own '
                       'values under those names', skipped)
    arguments = dict(url_list=os.path.dirname(parquets[0]), input_format='parquet', url_col=options.url_col,
                     caption_col='caption' if 'caption' in columns else None,
                     save_additional_columns=[name for name in columns if name not in RESERVED_COLUMNS] or None,
                     output_folder=output, output_format=output_format, resize_mode='no',
                     processes_count=num_processes, thread_count=options.thread_count,
                     number_sample_per_shard=options.samples_per_shard, oom_shard_count=SHARD_DIGITS,
                     timeout=options.timeout, retries=options.retries, distributor=options.distributor,
                     incremental_mode='incremental', enable_wandb=False)
    # albumentations asks the network on import; a local Spark session's executors start the
    # python3 of PATH, which may lack img2dataset (a cluster's spark.pyspark.python still wins).
    # OpenCV's own pixel bound (img2dataset decodes with it) matches the rule's, behind its header check.
    policy = options.url_policy()
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE='1', PYSPARK_PYTHON=os.environ.get('PYSPARK_PYTHON', sys.executable),
               OPENCV_IO_MAX_IMAGE_PIXELS=str(policy.max_pixels),
               PYTHONPATH=os.pathsep.join(filter(None, [PROJECT_ROOT, os.environ.get('PYTHONPATH')])))
    # Its processes import wandb, which makes temporary folders it removes only at a clean exit, and
    # img2dataset ends its pool's processes with SIGTERM: their TMPDIR is a folder removed here.
    with tempfile.TemporaryDirectory(prefix='t2i-download-') as scratch, tempfile.TemporaryFile('w+') as log, \
            tqdm(total=len(shards), initial=len(finished_shards(output) & set(shards)), unit='shard',
                 desc=f'downloading {os.path.dirname(output)}') as bar:
        process = subprocess.Popen([sys.executable, '-c', _DOWNLOAD, json.dumps(arguments), json.dumps(asdict(policy))],
                                   env=dict(env, TMPDIR=scratch), stdout=log, stderr=subprocess.STDOUT)
        while process.poll() is None:
            time.sleep(POLL_SECONDS)
            bar.update(len(finished_shards(output) & set(shards)) - bar.n)
        bar.update(len(finished_shards(output) & set(shards)) - bar.n)
        if process.returncode != 0:
            log.seek(0)
            lines = [line.strip() for line in log.read().splitlines() if line.strip()]
            last = next((line for line in reversed(lines) if 'Error' in line or 'Exception' in line),
                        lines[-1] if lines else f'exit status {process.returncode}')
            hint = (' Every executor needs this project and img2dataset in its Python (PYSPARK_PYTHON or '
                    'spark.pyspark.python).' if options.distributor == 'pyspark' else '')
            raise IndexFormatError(f'the img2dataset download ({options.distributor}) failed: {last[:300]}; '
                                   f'finished shards are kept.{hint}')


def download_summary(output: str, shards: list[str], earlier: set[str], options: DownloadOptions,
                     urls: int) -> dict:
    """img2dataset's per-shard stats added up: what ``Report.download`` holds."""
    successes, failed = 0, {}
    done = finished_shards(output)
    for shard in sorted(done & set(shards)):
        stats = shard_stats(os.path.join(output, f'{shard}_stats.json'))
        successes += stats['successes']
        for reason, count in stats['status_dict'].items():
            if reason != 'success':
                failed[reason] = failed.get(reason, 0) + count
    return {'distributor': options.distributor, 'urls': urls, 'shards_total': len(shards),
            'shards_now': len((done - earlier) & set(shards)), 'shards_earlier': len(earlier & set(shards)),
            'shards_unfinished': [shard for shard in shards if shard not in done],
            'successes': successes, 'failed_by_reason': failed}


def shard_stats(path: str) -> dict:
    """img2dataset's stats of one shard (bounded, a regular file), its keys checked: an
    ``IndexFormatError`` naming the file otherwise."""
    stats = read_marker(path)
    counts = stats.get('status_dict') if isinstance(stats, dict) else None
    if not (isinstance(stats, dict) and type(stats.get('successes')) is int and isinstance(counts, dict)
            and all(isinstance(reason, str) and type(count) is int for reason, count in counts.items())):
        raise IndexFormatError(f'{path}: not img2dataset\'s stats of a shard (a JSON object of a "successes" '
                               'count and a "status_dict" of counts); remove it to download the shard again')
    return stats


def build_index(files: Files, report: Report, layout: PairLayout = LAYOUT) -> None:
    """The index (``layout.index``) from the samples in the shard folders (not img2dataset's per-shard
    stats and parquet beside them)."""
    in_shards = {path for path in files.paths if path.count('/') >= 2}
    build_pair_index(Files(files.root, in_shards, files.step), report, layout)


def prepare_recap(dataset: str, root: str, parquets: list[str], options: DownloadOptions, *,
                  num_processes: int = DEFAULT_NUM_PROCESSES, start: int = 0, end: int = -1,
                  step=EXTRACT, index: str = LAYOUT.index) -> Report:
    """Download what is missing, then index ``raw/`` (files, or with ``INDEX_MEMBERS`` the tars) into
    ``<root>/<index>``."""
    report = Report(dataset=dataset, root=root, step=step.name)
    output = os.path.join(root, IMAGE_FOLDER)
    output_format = 'webdataset' if step is INDEX_MEMBERS else 'files'
    try:
        if (start, end) != (0, -1):
            raise IndexFormatError('--start/--end slice tars; the URL route spreads one download over many '
                                   'machines with --distributor pyspark instead')
        problem = links_out(root, ('.prepare', IMAGE_FOLDER))  # before any marker or download is written
        if problem:
            raise IndexFormatError(problem)
        check_output_format(root, output_format)
        rows = [parquet_rows(path, options.url_col) for path in parquets]
        shards = shard_names(rows, options.samples_per_shard)
        earlier = finished_shards(output)
        if set(shards) - earlier:
            run_img2dataset(parquets, output, output_format, options, num_processes, shards)
        report.download = download_summary(output, shards, earlier, options, sum(rows))
    except (IndexFormatError, MissingExtra) as e:
        report.index_error = str(e)
        return report
    done = [shard for shard in shards if shard not in report.download['shards_unfinished']]
    jobs = ([TarJob(root, f'{IMAGE_FOLDER}/{shard}.tar', f'{IMAGE_FOLDER}/{shard}') for shard in done]
            if output_format == 'webdataset' else [])
    looked_for = f'images downloaded from {PARQUET_FOLDER}/*.parquet into {IMAGE_FOLDER}/'
    return prepare(dataset, root, jobs, [IMAGE_FOLDER], partial(build_index, layout=replace(LAYOUT, index=index)),
                   looked_for=looked_for, num_processes=num_processes, step=step, report=report)


def check_output_format(root: str, output_format: str) -> None:
    """One download is files or tars, never a mix: a run with the other choice is refused."""
    marker = os.path.join(root, '.prepare', 'recap.json')
    earlier = None
    if os.path.lexists(marker):
        recorded = read_marker(marker)
        earlier = recorded.get('output_format') if isinstance(recorded, dict) else 'unreadable'
        if earlier not in ('files', 'webdataset'):
            raise IndexFormatError(f'{marker}: not the record of a download (a regular JSON file of its '
                                   '"output_format", files or webdataset); remove it to go on')
    if earlier not in (None, output_format):
        flag = 'with' if earlier == 'webdataset' else 'without'
        raise IndexFormatError(f'{root}/{IMAGE_FOLDER} was downloaded as {earlier} by an earlier run: run {flag} '
                               f'--no-extract, or remove {IMAGE_FOLDER}/ and .prepare/ to download again')
    write_json(marker, {'output_format': output_format})


def recap_route(root: str) -> list[str] | None:
    """The parquets of the URL route when the download is one (parquets, and no image tar), else None."""
    parquets = find_parquets(root)
    has_tars = glob.glob(os.path.join(root, IMAGE_FOLDER, '*.tar')) and not os.path.exists(
        os.path.join(root, '.prepare', 'recap.json'))
    return parquets if parquets and not has_tars else None


def add_download_options(parser, defaults: DownloadOptions = DownloadOptions()) -> None:
    """The URL route's options, for the tools whose download may be URL parquets."""
    group = parser.add_argument_group('URL parquets (parquets/*.parquet, fetched with img2dataset)')
    group.add_argument('--url-col', default=defaults.url_col, help='the URL column (default: %(default)s)')
    group.add_argument('--distributor', choices=DISTRIBUTORS, default=defaults.distributor,
                       help="img2dataset's distributor: this machine's processes, or a pyspark cluster "
                            '(default: %(default)s)')
    group.add_argument('--thread-count', type=int, default=defaults.thread_count,
                       help='download threads per process (default: %(default)s)')
    group.add_argument('--timeout', type=int, default=defaults.timeout,
                       help='seconds a URL may take in all (redirects, headers and body) before it counts '
                            'as failed (default: %(default)s)')
    group.add_argument('--retries', type=int, default=defaults.retries,
                       help='retries of a failed URL (default: %(default)s)')
    group.add_argument('--samples-per-shard', type=int, default=defaults.samples_per_shard,
                       help='URLs per shard folder raw/<shard>/ (default: %(default)s)')
    group.add_argument('--max-image-mb', type=int, default=defaults.max_bytes >> 20,
                       help='a larger download is refused and counted (default: %(default)s)')
    group.add_argument('--allow-local-urls', action='store_true',
                       help='fetch URLs on loopback and private addresses too (a test server, a mirror on '
                            'your network). Off by default: the parquets come from others, and their URLs '
                            'may name this machine or its network; link-local and metadata addresses, and '
                            'schemes other than http and https, stay refused')


def download_options(args) -> DownloadOptions:
    return DownloadOptions(url_col=args.url_col, distributor=args.distributor, thread_count=args.thread_count,
                           timeout=args.timeout, retries=args.retries, samples_per_shard=args.samples_per_shard,
                           allow_local_urls=args.allow_local_urls, max_bytes=args.max_image_mb << 20)
