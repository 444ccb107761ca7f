"""BLIP3o-60k: extract each raw/<stem>.tar into raw/<stem>/, then check data.json against the files (or build it by pairing each image with its .txt caption).

Safe to run again: finished tars are skipped. --start/--end take a slice of the sorted tar list so
that several machines can share the work; the index is built by the run that finishes the last tar.
A summary is printed and written to <root>/prepare_report.json.
"""
import sys

from src.prepare.datasets import BLIP3O60K_ROOT, prepare_blip3o60k
from src.prepare.runner import run_tool, tool_parser


def main(argv=None) -> int:
    args = tool_parser(__doc__, BLIP3O60K_ROOT).parse_args(argv)
    return run_tool(prepare_blip3o60k, args)


if __name__ == '__main__':
    sys.exit(main())
