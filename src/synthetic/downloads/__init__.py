"""Miniature raw downloads of the five datasets, laid out exactly as each guide's download leaves them.
One module a download (``midjourney23m``, ``laion6m``, ...; ``parts`` the blocks they are made of).

Each ``make_<name>(root, ...)`` writes real tar files of real encoded images (several formats, modes,
sizes and aspect ratios) under ``root`` and returns an :class:`Expected`: what a correct preparation
followed by the dataset class must give. ``make_all(data_dir)`` writes all five under their default
roots (``data_dir/midjourney-23m``, ...), as the tools' ``--root`` defaults expect below ``data/``.

Options shared by every ``make_<name>``:

- ``n``: the number of well-formed samples (the dataset yields exactly these, plus the one sample
  salvaged from the truncated tar when ``truncated_tar``).
- ``seed``: everything (names, captions, images) is a function of it.
- ``shards``: how many tar files the well-formed samples are spread over.
- ``faults``: add the faults real downloads of that dataset have (listed per function); each is a
  :class:`Fault` in ``Expected.faults`` saying whether the preparation tool drops it ('prepare', the
  entry is not in the index it writes) or the index keeps it and the dataset skips it ('load').
- ``hostile``: add to the first tar the members no extraction may write: ``../escape.txt``,
  ``/abs.txt`` and a symlink ``escape-link`` pointing outside (to ``/etc/passwd``). The places they
  would land are in ``Expected.must_not_exist``.
- ``truncated_tar``: add one more tar, cut in the middle of its last member's data, as an
  interrupted download leaves it. Its complete members form one usable sample (in
  ``Expected.samples``: the tool salvages them); the cut image is a 'prepare' fault (the tool must
  not leave a partial file, and the index must not name it).
"""
from __future__ import annotations

from pathlib import Path

from src.synthetic.downloads.blip3o60k import make_blip3o60k
from src.synthetic.downloads.caption_layout import make_caption_layout
from src.synthetic.downloads.dalle3 import make_dalle3
from src.synthetic.downloads.laion6m import make_laion6m
from src.synthetic.downloads.megalith10m import make_megalith10m
from src.synthetic.downloads.midjourney23m import make_midjourney23m
from src.synthetic.downloads.parts import Expected, Fault
from src.synthetic.downloads.recap import make_recap
from src.synthetic.downloads.redcaps5m import make_redcaps5m

__all__ = ['DEFAULT_ROOTS', 'FAMILY_MAKERS', 'FAMILY_ROOTS', 'MAKERS', 'Expected', 'Fault', 'make_all',
           'make_blip3o60k', 'make_caption_layout', 'make_dalle3', 'make_laion6m', 'make_megalith10m',
           'make_midjourney23m', 'make_recap', 'make_redcaps5m']

# The tools' default ``--root`` for each dataset, relative to the working directory.
DEFAULT_ROOTS = {
    'midjourney23m': 'data/midjourney-23m',
    'laion6m': 'data/laion6m',
    'dalle3': 'data/dalle3',
    'redcaps5m': 'data/redcaps5m',
    'blip3o60k': 'data/BLIP3o-60k',
}

MAKERS = {
    'midjourney23m': make_midjourney23m,
    'laion6m': make_laion6m,
    'dalle3': make_dalle3,
    'redcaps5m': make_redcaps5m,
    'blip3o60k': make_blip3o60k,
}


# The family's other datasets: an editing one and, by the URL route (make_recap), an image-to-text one.
FAMILY_MAKERS = {'megalith10m': make_megalith10m}
FAMILY_ROOTS = {'megalith10m': 'data/megalith-10m', 'cc3m': 'data/cc3m'}


def make_all(data_dir, n: int = 12, seed: int = 0, **options) -> dict[str, Expected]:
    """All five downloads under ``data_dir/<default root name>`` (``data_dir`` plays ``data/``).

    ``options`` (faults, hostile, truncated_tar, shards) go to every maker.
    """
    data_dir = Path(data_dir)
    return {name: make(data_dir / Path(DEFAULT_ROOTS[name]).name, n=n, seed=seed, **options)
            for name, make in MAKERS.items()}
