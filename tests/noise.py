"""What third-party libraries print that the project prevents: a clean run holds none of it."""
from __future__ import annotations

import re

THIRD_PARTY = re.compile('|'.join([
    r'\b\w+Warning: ',                            # Python's warnings: DeprecationWarning, UserWarning, ...
    r'Failed to search registry', r'will be deprecated', r'is the alias of',  # mmengine
    r'gemm_4bit', r'kernels-community',           # bitsandbytes
    r'The current process just got forked',       # tokenizers
    r'suggested max number of worker',            # torch's DataLoader
    r'PyTorch version .* available',              # datasets
    r'Downloading starting now', r'Sharding file number', r'^worker  - success',  # img2dataset
    r'^\s*\d+it \[',                              # a progress bar without a description
    r'Retrying in \d+s', r'Traceback \(most recent call last\)',
]))


def noise(text: str) -> list[str]:
    """The lines of ``text`` that are third-party noise."""
    return [line for line in text.splitlines() if THIRD_PARTY.search(line)]
