"""DALL-E 3 1M: extract the tars (data/*.tar as on the hub, or *.tar as the guide draws them) into
data/, then build dalle3.parquet (width, height, caption, filename) from the json files; with
--write-txt also data/<key>.txt caption files.

The tars are webdataset shards: <key>.json pairs with <key>.png, .jpg or .jpeg, and `filename` is
that member (a json whose image_name says otherwise is counted in the summary).

Safe to run again: finished tars are skipped. --start/--end take a slice of the sorted tar list so
that several machines can share the work; the index is built by the run that finishes the last tar.
A summary is printed and written to <root>/prepare_report.json.
"""
import sys

from src.prepare.dalle3 import CAPTION_FIELDS, DEFAULT_CAPTION_FIELD
from src.prepare.datasets import DALLE3_ROOT, prepare_dalle3
from src.prepare.runner import run_tool, tool_parser


def main(argv=None) -> int:
    parser = tool_parser(__doc__, DALLE3_ROOT)
    parser.add_argument('--caption-field', default=DEFAULT_CAPTION_FIELD, choices=CAPTION_FIELDS,
                        help='the json key used as caption; a list takes its first element (default: %(default)s)')
    parser.add_argument('--write-txt', action='store_true',
                        help='also write each caption to data/<stem>.txt')
    args = parser.parse_args(argv)
    return run_tool(prepare_dalle3, args, caption_field=args.caption_field, write_txt=args.write_txt)


if __name__ == '__main__':
    sys.exit(main())
