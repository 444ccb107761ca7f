"""LAION 6M: extract raw/*.tar and captions/*.tar in place, then check data.json against the files (or build it by pairing each image with its caption json).

Safe to run again: finished tars are skipped. --start/--end take a slice of the sorted tar list so
that several machines can share the work; the index is built by the run that finishes the last tar.
A summary is printed and written to <root>/prepare_report.json.
"""
import sys

from src.prepare.datasets import LAION6M_ROOT, prepare_laion6m
from src.prepare.runner import run_tool, tool_parser


def main(argv=None) -> int:
    args = tool_parser(__doc__, LAION6M_ROOT).parse_args(argv)
    return run_tool(prepare_laion6m, args)


if __name__ == '__main__':
    sys.exit(main())
