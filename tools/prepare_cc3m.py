"""Conceptual Captions (CC3M), the image-to-text data of Harmon's image2text.py: its URL parquets
(parquets/*.parquet, columns image_url and caption) fetched with img2dataset into
raw/<shard>/<key>.jpg beside <key>.json (the caption and the other columns), and the index
cc3m_densecaps.json pairing them, which configs/datasets/cc3m_image2text.py (and Harmon's config)
reads. A re-run fetches only the shards that did not finish.

    huggingface-cli download google-research-datasets/conceptual_captions --local-dir data/cc3m/parquets --repo-type dataset --include "labeled/*"
    .venv/bin/python tools/prepare_cc3m.py --num-processes 16

A summary is printed and written to <root>/prepare_report.json.
"""
import sys

from src.prepare.datasets import CC3M_ROOT, CC3M_URL_COL, prepare_cc3m
from src.prepare.recap import DownloadOptions, add_download_options, download_options
from src.prepare.runner import run_tool, tool_parser


def main(argv=None) -> int:
    parser = tool_parser(__doc__, CC3M_ROOT)
    add_download_options(parser, DownloadOptions(url_col=CC3M_URL_COL))
    args = parser.parse_args(argv)
    return run_tool(prepare_cc3m, args, download=download_options(args))


if __name__ == '__main__':
    sys.exit(main())
