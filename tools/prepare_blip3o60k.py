"""BLIP3o-60k: extract each raw/<stem>.tar into raw/<stem>/, then check data.json against the files (or build it by pairing each image with its .txt caption).

Safe to run again: finished tars are skipped. --start/--end take a slice of the sorted tar list so
that several machines can share the work; the index is built by the run that finishes the last tar.
A summary is printed and written to <root>/prepare_report.json.
"""
import functools
import sys

from src.prepare.tool_mains import main as tool_main

main = functools.partial(tool_main, 'blip3o60k', __doc__)  # main(argv=None) -> exit code

if __name__ == '__main__':
    sys.exit(main())
