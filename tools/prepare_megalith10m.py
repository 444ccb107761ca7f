"""megalith-10m, the images of OpenUni's editing pretraining (configs/datasets/megalith10m_reconstruct.py)
and of VGT's text-to-image mix: extract each raw/<stem>.tar into raw/<stem>/ and captions/*.tar in
place, then check megalith10m_all.json against the files (or build it by pairing each image with its
caption json by name).

    huggingface-cli download drawthingsai/megalith-10m --local-dir data/megalith-10m/raw --repo-type dataset
    huggingface-cli download wusize/megalith-10m --local-dir data/megalith-10m --repo-type dataset
    .venv/bin/python tools/prepare_megalith10m.py --num-processes 16

Safe to run again: finished tars are skipped. --start/--end take a slice of the sorted tar list so
that several machines can share the work; the index is built by the run that finishes the last tar.
A summary is printed and written to <root>/prepare_report.json.
"""
import functools
import sys

from src.prepare.tool_mains import main as tool_main

main = functools.partial(tool_main, 'megalith10m', __doc__)  # main(argv=None) -> exit code

if __name__ == '__main__':
    sys.exit(main())
