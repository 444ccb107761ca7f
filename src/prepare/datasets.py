"""The five datasets: which tars go where, and which index each one gets.

Each ``prepare_<name>(root, **options)`` returns the run's :class:`~src.prepare.report.Report`;
``options`` are those of :func:`src.prepare.runner.prepare` (num_processes, start, end, step).
"""
from __future__ import annotations

import glob
import os
from functools import partial

from src.prepare import dalle3, midjourney
from src.prepare.tar_headers import TarJob
from src.prepare.pairs import PairLayout, build_pair_index
from src.prepare.recap import DownloadOptions, prepare_recap, recap_route
from src.prepare.report import Report
from src.prepare.runner import prepare

MIDJOURNEY23M_ROOT = 'data/midjourney-23m'
LAION6M_ROOT = 'data/laion6m'
DALLE3_ROOT = 'data/dalle3'
REDCAPS5M_ROOT = 'data/redcaps5m'
BLIP3O60K_ROOT = 'data/BLIP3o-60k'
MEGALITH10M_ROOT = 'data/megalith-10m'
CC3M_ROOT = 'data/cc3m'

LAION6M_LAYOUT = PairLayout(index='data.json', image_folder='raw', cap_folder='captions',
                            caption_folders=('captions', 'raw'), caption_ext='.json')
REDCAPS5M_LAYOUT = PairLayout(index='redcaps5m_data.json', image_folder='raw', cap_folder='raw',
                              caption_folders=('raw',), caption_ext='.json')
BLIP3O60K_LAYOUT = PairLayout(index='data.json', image_folder='raw', cap_folder='raw',
                              caption_folders=('raw',), caption_ext='.txt')
MEGALITH10M_LAYOUT = PairLayout(index='megalith10m_all.json', image_folder='raw', cap_folder='captions',
                                caption_folders=('captions',), caption_ext='.json')
CC3M_INDEX = 'cc3m_densecaps.json'  # what Harmon's image2text.py reads
CC3M_URL_COL = 'image_url'  # Conceptual Captions' parquet


def find_tars(root: str, pattern: str) -> list[str]:
    """The tars matching ``pattern`` (relative to ``root``; '**' spans folders), sorted. Regular files
    only: a FIFO named like a tar would hang the step that opens it."""
    return sorted(path.replace(os.sep, '/') for path in glob.glob(pattern, root_dir=root, recursive=True)
                  if os.path.isfile(os.path.join(root, path)))


def prepare_midjourney23m(root: str = MIDJOURNEY23M_ROOT, *, columns: midjourney.Columns = midjourney.Columns(),
                           **options) -> Report:
    """raw/images/**/*.tar -> images/<member>; raw/table-*.parquet -> data.json."""
    jobs = [TarJob(root, name, midjourney.IMAGE_FOLDER) for name in find_tars(root, 'raw/images/**/*.tar')]
    return prepare('midjourney23m', root, jobs, [midjourney.IMAGE_FOLDER],
                   partial(midjourney.build_index, columns=columns),
                   looked_for=f'image tars raw/images/**/*.tar ({midjourney.GATED})', **options)


def prepare_laion6m(root: str = LAION6M_ROOT, *, download: DownloadOptions = DownloadOptions(),
                    **options) -> Report:
    """raw/*.tar and captions/*.tar extracted in place; data.json checked (or built). Or, for a
    download of URL parquets (parquets/*.parquet), the images fetched by img2dataset (recap.py)."""
    parquets = recap_route(root)
    if parquets:
        return prepare_recap('laion6m', root, parquets, download, **options)
    jobs = [TarJob(root, name, os.path.dirname(name))
            for name in find_tars(root, 'raw/*.tar') + find_tars(root, 'captions/*.tar')]
    return prepare('laion6m', root, sorted(jobs, key=lambda job: job.name), ['raw', 'captions'],
                   partial(build_pair_index, layout=LAION6M_LAYOUT),
                   looked_for='image tars raw/*.tar (the guide) or URL parquets parquets/*.parquet (today)',
                   **options)


def prepare_dalle3(root: str = DALLE3_ROOT, *, caption_field: str = dalle3.DEFAULT_CAPTION_FIELD,
                   write_txt: bool = False, **options) -> Report:
    """data/*.tar (the hub) or *.tar (the guide) -> data/<key>.<png|jpg|jpeg> + .json; dalle3.parquet;
    data/<key>.txt with ``write_txt``."""
    jobs = [TarJob(root, name, dalle3.DATA_FOLDER)
            for name in find_tars(root, '*.tar') + find_tars(root, f'{dalle3.DATA_FOLDER}/*.tar')]
    return prepare('dalle3', root, jobs, [dalle3.DATA_FOLDER],
                   partial(dalle3.build_index, caption_field=caption_field, write_txt=write_txt),
                   looked_for='tars data/*.tar (the hub) or *.tar (the guide)', **options)


def prepare_redcaps5m(root: str = REDCAPS5M_ROOT, *, download: DownloadOptions = DownloadOptions(),
                      **options) -> Report:
    """raw/*.tar extracted in place; redcaps5m_data.json checked (or built). Or, for a download of URL
    parquets (parquets/*.parquet), the images fetched by img2dataset (recap.py)."""
    parquets = recap_route(root)
    if parquets:
        return prepare_recap('redcaps5m', root, parquets, download, **options)
    jobs = [TarJob(root, name, 'raw') for name in find_tars(root, 'raw/*.tar')]
    return prepare('redcaps5m', root, jobs, ['raw'], partial(build_pair_index, layout=REDCAPS5M_LAYOUT),
                   looked_for='image tars raw/*.tar (the guide) or URL parquets parquets/*.parquet (today)',
                   **options)


def prepare_blip3o60k(root: str = BLIP3O60K_ROOT, **options) -> Report:
    """raw/<stem>.tar -> raw/<stem>/; data.json checked (or built by pairing image and .txt)."""
    jobs = [TarJob(root, name, name[:-len('.tar')]) for name in find_tars(root, 'raw/*.tar')]
    return prepare('blip3o60k', root, jobs, ['raw'], partial(build_pair_index, layout=BLIP3O60K_LAYOUT),
                   looked_for='tars raw/*.tar', **options)


def prepare_megalith10m(root: str = MEGALITH10M_ROOT, **options) -> Report:
    """raw/<stem>.tar -> raw/<stem>/; captions/*.tar extracted in place; megalith10m_all.json checked
    (or built by pairing each image with its caption json by name)."""
    jobs = ([TarJob(root, name, name[:-len('.tar')]) for name in find_tars(root, 'raw/*.tar')]
            + [TarJob(root, name, 'captions') for name in find_tars(root, 'captions/*.tar')])
    return prepare('megalith10m', root, jobs, ['raw', 'captions'], partial(build_pair_index, layout=MEGALITH10M_LAYOUT),
                   looked_for='image tars raw/*.tar and caption tars captions/*.tar', **options)


def prepare_cc3m(root: str = CC3M_ROOT, *, download: DownloadOptions = DownloadOptions(url_col=CC3M_URL_COL),
                 **options) -> Report:
    """Conceptual Captions' URL parquets (parquets/*.parquet): the images fetched with img2dataset into
    raw/<shard>/<key>.jpg beside <key>.json (its caption and the other columns), and the index
    cc3m_densecaps.json pairing them, as Harmon's image-to-text config reads it."""
    parquets = recap_route(root)
    if not parquets:
        report = Report(dataset='cc3m', root=root)
        report.index_error = (f'nothing to prepare in {os.path.abspath(root)}: no URL parquets parquets/*.parquet. '
                              'Is --root the folder the download went to?')
        return report
    return prepare_recap('cc3m', root, parquets, download, index=CC3M_INDEX, **options)
