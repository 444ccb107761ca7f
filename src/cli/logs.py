"""The tools' output: their own lines, not the INFO chatter of the libraries they import."""
from __future__ import annotations

import logging


def setup_logging(*names: str) -> None:
    """Plain messages on stderr: INFO and up from this project (``src``) and the tool's own loggers
    (``names``), WARNING and up from everything else (``datasets`` says which PyTorch it found)."""
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    for name in ('src', *names):
        logging.getLogger(name).setLevel(logging.INFO)
