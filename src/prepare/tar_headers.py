"""Moved to :mod:`src.datasets.storage.tar_headers` (beside the tar index, so that src/latents reads tar
headers without importing src/prepare). This path stays for importers: it is the same module."""
import sys

from src.datasets.storage import tar_headers as _moved

sys.modules[__name__] = _moved
