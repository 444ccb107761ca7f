"""Midjourney Captioned 23M: extract raw/images/**/*.tar into images/, then build data.json from raw/table-*.parquet (one entry per table row whose image exists; rows with a null or
implausible size are dropped and counted).

Safe to run again: finished tars are skipped. --start/--end take a slice of the sorted tar list so
that several machines can share the work; the index is built by the run that finishes the last tar.
A summary is printed and written to <root>/prepare_report.json.
"""
import sys

from src.prepare.datasets import MIDJOURNEY23M_ROOT, prepare_midjourney23m
from src.prepare.midjourney import Columns
from src.prepare.runner import run_tool, tool_parser


def main(argv=None) -> int:
    parser = tool_parser(__doc__, MIDJOURNEY23M_ROOT)
    defaults = Columns()
    group = parser.add_argument_group("the tables (their schema is not published: name what yours hold)")
    group.add_argument('--tables', default=defaults.tables, help='table files under the root (default: %(default)s)')
    for role in ('filename', 'caption', 'width', 'height'):
        group.add_argument(f'--{role}-col', default=getattr(defaults, role),
                           help=f'the {role} column (default: %(default)s)')
    args = parser.parse_args(argv)
    columns = Columns(tables=args.tables, filename=args.filename_col, caption=args.caption_col,
                      width=args.width_col, height=args.height_col)
    return run_tool(prepare_midjourney23m, args, columns=columns)


if __name__ == '__main__':
    sys.exit(main())
