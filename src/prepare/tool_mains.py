"""What each ``tools/prepare_<name>.py`` runs: the shared options (``runner.tool_parser``), the
dataset's own, and its ``prepare_<name>`` (``runner.run_tool``). The tools keep their docstring (the
``--help`` text) and call :func:`main`."""
from __future__ import annotations

import argparse
from typing import Callable

from src.prepare import datasets
from src.prepare.dalle3 import CAPTION_FIELDS, DEFAULT_CAPTION_FIELD
from src.prepare.midjourney import Columns
from src.prepare.recap import DownloadOptions, add_download_options, download_options
from src.prepare.runner import run_tool, tool_parser


def _no_options(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], dict]:
    return lambda args: {}


def _url_route(defaults: DownloadOptions | None = None):
    def add(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], dict]:
        if defaults is None:
            add_download_options(parser)
        else:
            add_download_options(parser, defaults)
        return lambda args: dict(download=download_options(args))
    return add


def _dalle3(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], dict]:
    parser.add_argument('--caption-field', default=DEFAULT_CAPTION_FIELD, choices=CAPTION_FIELDS,
                        help='the json key used as caption; a list takes its first element (default: %(default)s)')
    parser.add_argument('--write-txt', action='store_true',
                        help='also write each caption to data/<stem>.txt')
    return lambda args: dict(caption_field=args.caption_field, write_txt=args.write_txt)


def _midjourney(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], dict]:
    defaults = Columns()
    group = parser.add_argument_group("the tables (their schema is not published: name what yours hold)")
    group.add_argument('--tables', default=defaults.tables, help='table files under the root (default: %(default)s)')
    for role in ('filename', 'caption', 'width', 'height'):
        group.add_argument(f'--{role}-col', default=getattr(defaults, role),
                           help=f'the {role} column (default: %(default)s)')
    return lambda args: dict(columns=Columns(tables=args.tables, filename=args.filename_col,
                                             caption=args.caption_col, width=args.width_col,
                                             height=args.height_col))


# name -> (its default root, what adds its own options and turns them into prepare_<name>'s keywords)
TOOLS = {
    'blip3o60k': (datasets.BLIP3O60K_ROOT, _no_options),
    'cc3m': (datasets.CC3M_ROOT, _url_route(DownloadOptions(url_col=datasets.CC3M_URL_COL))),
    'dalle3': (datasets.DALLE3_ROOT, _dalle3),
    'laion6m': (datasets.LAION6M_ROOT, _url_route()),
    'megalith10m': (datasets.MEGALITH10M_ROOT, _no_options),
    'midjourney23m': (datasets.MIDJOURNEY23M_ROOT, _midjourney),
    'redcaps5m': (datasets.REDCAPS5M_ROOT, _url_route()),
}


def main(name: str, description: str, argv=None) -> int:
    """``tools/prepare_<name>.py``: parse its options (``description`` is its ``--help`` text), run
    ``prepare_<name>``, return the exit code."""
    default_root, add_options = TOOLS[name]
    parser = tool_parser(description, default_root)
    options_of = add_options(parser)
    args = parser.parse_args(argv)
    return run_tool(getattr(datasets, f'prepare_{name}'), args, **options_of(args))
