"""The optional stacks (``pip install 't2i-data[<extra>]'``): a feature whose package is missing
says, in one line, which extra brings it."""
from __future__ import annotations

import importlib
import importlib.util

# module -> (extra, what needs it)
EXTRAS = {
    'diffusers': ('latents', 'caching latents (tools/cache_latents.py)'),
    'boto3': ('s3', 'object storage (ceph_folder, latents_ceph_folder, tools/upload.py)'),
    'img2dataset': ('download', 'downloading URL parquets (the URL route of laion6m and redcaps5m)'),
    'matplotlib': ('report', 'the plots of tools/inspect_dataset.py'),
    'pyspark': ('spark', '--distributor pyspark'),
    'imagehash': ('dedup', 'near duplicates (tools/find_duplicates.py)'),
}


class MissingExtra(ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


def check(module: str) -> None:
    """``MissingExtra`` naming the extra to install when ``module`` is not installed (nothing imported:
    for a module that runs in another process)."""
    try:
        found = importlib.util.find_spec(module)
    except ImportError:  # a parent package missing, or a finder that refuses the name
        found = None
    if found is None:
        raise _missing(module)


def _missing(module: str) -> MissingExtra:
    top = module.split('.')[0]
    extra, what = EXTRAS[top]
    return MissingExtra(f"{what} needs {top}, which is not installed: pip install 't2i-data[{extra}]'")


def require(module: str):
    """``import module``, or ``MissingExtra`` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if err.name is not None and err.name.split('.')[0] != module.split('.')[0]:
            raise  # the package is there but broken: its own error says more
        raise _missing(module) from None
