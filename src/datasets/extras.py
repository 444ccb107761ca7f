"""The optional stacks (``pip install 't2i-data[<extra>]'``): a feature whose package is missing
says, in one line, which extra brings it."""
from __future__ import annotations

import importlib

# module -> (extra, what needs it)
EXTRAS = {
    'diffusers': ('latents', 'caching latents (tools/cache_latents.py)'),
    'boto3': ('s3', 'object storage (ceph_folder, latents_ceph_folder, tools/upload.py)'),
    'img2dataset': ('download', 'downloading URL parquets (the URL route of laion6m and redcaps5m)'),
    'matplotlib': ('report', 'the plots of tools/inspect_dataset.py'),
    'pyspark': ('spark', '--distributor pyspark'),
}


class MissingExtra(ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


def require(module: str):
    """``import module``, or ``MissingExtra`` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split('.')[0]
        if err.name is not None and err.name.split('.')[0] != top:
            raise  # the package is there but broken: its own error says more
        extra, what = EXTRAS[top]
        raise MissingExtra(f"{what} needs {top}, which is not installed: pip install 't2i-data[{extra}]'") from None
