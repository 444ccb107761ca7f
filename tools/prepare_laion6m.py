"""LAION 6M, either download route:

- image tars (the guide): extract raw/*.tar and captions/*.tar in place, then check data.json against the files (or build it by pairing each image with its caption json).
- URL parquets (upstream today: parquets/*.parquet): the images are fetched with img2dataset into
  raw/<shard>/<key>.jpg beside <key>.json (every other column of the parquet, re_caption among
  them), and data.json pairs them, for configs/datasets/laion6m_recap.py. A re-run fetches only the
  shards that did not finish; --no-extract keeps each shard as a tar (raw/<shard>.tar) instead.

Safe to run again: finished tars are skipped. --start/--end take a slice of the sorted tar list so
that several machines can share the work; the index is built by the run that finishes the last tar.
A summary is printed and written to <root>/prepare_report.json.
"""
import functools
import sys

from src.prepare.tool_mains import main as tool_main

main = functools.partial(tool_main, 'laion6m', __doc__)  # main(argv=None) -> exit code

if __name__ == '__main__':
    sys.exit(main())
