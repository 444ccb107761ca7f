"""Conceptual Captions (CC3M), the image-to-text data of Harmon's image2text.py: its URL parquets
(parquets/*.parquet, columns image_url and caption) fetched with img2dataset into
raw/<shard>/<key>.jpg beside <key>.json (the caption and the other columns), and the index
cc3m_densecaps.json pairing them, which configs/datasets/cc3m_image2text.py (and Harmon's config)
reads. A re-run fetches only the shards that did not finish.

    huggingface-cli download google-research-datasets/conceptual_captions --local-dir data/cc3m/parquets --repo-type dataset --include "labeled/*"
    .venv/bin/python tools/prepare_cc3m.py --num-processes 16

A summary is printed and written to <root>/prepare_report.json.
"""
import functools
import sys

from src.prepare.tool_mains import main as tool_main

main = functools.partial(tool_main, 'cc3m', __doc__)  # main(argv=None) -> exit code

if __name__ == '__main__':
    sys.exit(main())
