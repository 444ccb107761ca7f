"""The tools' output: their own lines, not the INFO chatter of the libraries they import."""
from __future__ import annotations

import logging

from src.datasets.storage.redact import redact


class Redact(logging.Filter):
    """Every line a tool prints loses the credentials of the URLs in it (``src.datasets.storage.redact``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        return True


def setup_logging(*names: str) -> None:
    """Plain messages on stderr: INFO and up from this project (``src``) and the tool's own loggers
    (``names``), WARNING and up from everything else (``datasets`` says which PyTorch it found);
    credentials in any of them redacted."""
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    for handler in logging.getLogger().handlers:
        if not any(isinstance(existing, Redact) for existing in handler.filters):
            handler.addFilter(Redact())
    for name in ('src', *names):
        logging.getLogger(name).setLevel(logging.INFO)
