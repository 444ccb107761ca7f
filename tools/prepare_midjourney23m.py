"""Midjourney Captioned 23M: extract raw/images/**/*.tar into images/, then build data.json from raw/table-*.parquet (one entry per table row whose image exists).

Safe to run again: finished tars are skipped. --start/--end take a slice of the sorted tar list so
that several machines can share the work; the index is built by the run that finishes the last tar.
A summary is printed and written to <root>/prepare_report.json.
"""
import sys

from src.prepare.datasets import MIDJOURNEY23M_ROOT, prepare_midjourney23m
from src.prepare.runner import run_tool, tool_parser


def main(argv=None) -> int:
    args = tool_parser(__doc__, MIDJOURNEY23M_ROOT).parse_args(argv)
    return run_tool(prepare_midjourney23m, args)


if __name__ == '__main__':
    sys.exit(main())
