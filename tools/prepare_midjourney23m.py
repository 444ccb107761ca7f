"""Midjourney Captioned 23M: extract raw/images/**/*.tar into images/, then build data.json from raw/table-*.parquet (one entry per table row whose image exists; rows with a null or
implausible size are dropped and counted).

Safe to run again: finished tars are skipped. --start/--end take a slice of the sorted tar list so
that several machines can share the work; the index is built by the run that finishes the last tar.
A summary is printed and written to <root>/prepare_report.json.
"""
import functools
import sys

from src.prepare.tool_mains import main as tool_main

main = functools.partial(tool_main, 'midjourney23m', __doc__)  # main(argv=None) -> exit code

if __name__ == '__main__':
    sys.exit(main())
