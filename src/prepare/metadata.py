"""The metadata a download carries beside each image (img2dataset's ``<key>.json``: url, key,
width, height, original sizes, status, hashes and the parquet's ``save_additional_columns``), kept
as index columns so that filters can use them (``src.datasets.index.filters``) and scores can be joined
by URL or key (``src.datasets.columns``). Numbers and short texts only: captions are read from their
files as ever, and long or binary values (EXIF) would bloat every index."""
from __future__ import annotations

import math
import numbers

MAX_TEXT = 512  # characters: URLs, keys, hashes, statuses, licences; not captions or EXIF blobs
SKIPPED = ('caption', 'exif', 'error_message')  # by substring of the key: captions stay in their files
RECORD_KEYS = ('image', 'annotation')


def carried_columns(obj) -> dict:
    """The numbers and short texts of a metadata object, by key (nothing for a non-object)."""
    if not isinstance(obj, dict):
        return {}
    kept = {}
    for key, value in obj.items():
        if key in RECORD_KEYS or any(part in key.lower() for part in SKIPPED):
            continue
        if isinstance(value, bool) or (isinstance(value, numbers.Real) and math.isfinite(value)):
            kept[key] = value
        elif isinstance(value, str) and len(value) <= MAX_TEXT:
            kept[key] = value
    return kept
