"""DALL-E 3 1M: extract the tars (data/*.tar as on the hub, or *.tar as the guide draws them) into
data/, then build dalle3.parquet (width, height, caption, filename) from the json files; with
--write-txt also data/<key>.txt caption files.

The tars are webdataset shards: <key>.json pairs with <key>.png, .jpg or .jpeg, and `filename` is
that member (a json whose image_name says otherwise is counted in the summary).

Safe to run again: finished tars are skipped. --start/--end take a slice of the sorted tar list so
that several machines can share the work; the index is built by the run that finishes the last tar.
A summary is printed and written to <root>/prepare_report.json.
"""
import functools
import sys

from src.prepare.tool_mains import main as tool_main

main = functools.partial(tool_main, 'dalle3', __doc__)  # main(argv=None) -> exit code

if __name__ == '__main__':
    sys.exit(main())
