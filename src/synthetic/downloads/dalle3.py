"""DALL-E 3's download: webdataset tars of a json and an image each, in the hub's layout or the guide's."""
from __future__ import annotations

import hashlib
import itertools
import random
from pathlib import Path

from src.synthetic.downloads.parts import (Download, Expected, JPEG_ONLY, PNG_ONLY, Picture, draw_captions,
                                           hex_id, hub_extras, json_bytes, picture, split_chunks)


def make_dalle3(root, n: int = 12, seed: int = 0, faults: bool = True, hostile: bool = False,
                truncated_tar: bool = False, shards: int = 3, layout: str = 'hub') -> Expected:
    """Webdataset tars of ``<key>.json`` + one image each. ``layout='hub'`` (as the hub repository
    is today): ``data/data-<k>.tar``, images ``.png``, ``.jpg`` and ``.jpeg``, the json with every
    field of the dataset card (``short_caption2`` / ``long_caption2`` as lists), and the root also
    holding README.md, CITATION.cff, hashing_functions.py, preview .jpg files and
    ``.cache/huggingface/``. ``layout='guide'``: ``data-<k>.tar`` in the root, ``.png`` only.
    The expected caption is ``short_caption`` (the guide's); ``long_caption`` and
    ``short_caption2`` (its first element) are in ``other_captions``.

    Faults: a json without ``width`` (its image is extracted, its row skipped as the guide does:
    'prepare', 'no width'); a malformed json ('prepare', 'unreadable json'); with the hub layout
    also a json whose image is in no tar ('prepare', 'no-image'), and a json whose ``image_name``
    names another file than its member (kept under the member: a usable sample, counted in the
    summary as a remark).
    """
    if layout not in ('hub', 'guide'):
        raise ValueError(f"layout is 'hub' or 'guide', not {layout!r}")
    dalle3 = _Dalle3(Path(root), seed, n, hub=layout == 'hub')
    kinds = [kind for pair_ in zip(PNG_ONLY, JPEG_ONLY) for kind in pair_] if dalle3.hub else PNG_ONLY
    pairs, pending_faults = [], []
    for i in range(n):
        pairs.append(dalle3.pair(picture(dalle3.rng, i, kinds)))
    if faults:
        dalle3.add_faults(pairs, pending_faults)
    folder = 'data/' if dalle3.hub else ''
    for k, chunk in enumerate(split_chunks(pairs, shards)):
        dalle3.download.tar(f'{folder}data-{k:06d}.tar', [m for members in chunk for m in members], hostile and k == 0)
    if truncated_tar:
        kept = dalle3.pair(picture(dalle3.rng, 1, PNG_ONLY))
        cut = dalle3.pair(picture(dalle3.rng, 2, PNG_ONLY), usable=False)
        dalle3.download.truncated_tar(f'{folder}data-999999.tar', kept + cut[::-1], cut[0][0])
    for fault in pending_faults:
        dalle3.download.fault(*fault)
    if dalle3.hub:
        hub_extras(dalle3.expected.root, previews=2)
    return dalle3.expected


class _Dalle3:
    """One DALL-E 3 download being drawn: its random source and captions, and its Expected."""

    def __init__(self, root: Path, seed: int, n: int, hub: bool):
        self.hub = hub
        self.rng = random.Random(f'dalle3-{seed}')
        self.expected = Expected('dalle3', root, image_folder='data', data_path='dalle3.parquet', cap_folder=None)
        self.download = Download(self.expected, self.expected.root / 'data')
        self.captions = iter(draw_captions(self.rng, n + 6))
        self.jpeg_exts = itertools.cycle(['.jpg', '.jpeg'])  # both are on the hub

    def pair(self, image: Picture, usable: bool = True, damage=None, image_name=None) -> list[tuple[str, bytes]]:
        """[(image name, image), (json name, metadata)]; ``damage`` rewrites the metadata bytes."""
        rng, expected = self.rng, self.expected
        key, caption = hex_id(rng, 16), next(self.captions)
        ext = image.ext if image.ext != '.jpg' else next(self.jpeg_exts)
        subject, style = caption.split(', ')[0], caption.split(', ')[-1]
        long_caption = (f'The image shows {subject}. It is rendered in the style of {style}, '
                        f'with careful attention to light and texture.')
        meta = {'image_name': image_name or f'{key}{ext}', 'md5_pil_hash': hex_id(rng, 32),
                'md5_file_hash': hashlib.md5(image.data).hexdigest(), 'short_caption': caption,
                'long_caption': long_caption, 'resolution': f'{image.width}x{image.height}',
                'width': image.width, 'height': image.height,
                'url': f'https://cdn.example.com/dalle3/{key}{ext}'}
        if self.hub:
            meta.update(sha512_hash=hex_id(rng, 128), source='dalle3', original_prompt=f'Make {subject}',
                        short_caption2=[f'{subject}, {style}'], long_caption2=[long_caption.upper()])
        if usable:
            expected.samples[f'{key}{ext}'] = caption
            expected.other_captions.setdefault('long_caption', {})[f'{key}{ext}'] = long_caption
            if self.hub:
                expected.other_captions.setdefault('short_caption2', {})[f'{key}{ext}'] = f'{subject}, {style}'
        return [(f'{key}{ext}', image.data), (f'{key}.json', damage(meta) if damage else json_bytes(meta))]

    def add_faults(self, pairs: list, pending_faults: list) -> None:
        """The faulty pairs, each at a random place in ``pairs``, and their faults in ``pending_faults``."""
        rng = self.rng
        for kind, damage, reason in [('json-without-width', _without_size, 'no width'),
                                     ('malformed-json', _malformed, 'unreadable json')]:
            members = self.pair(picture(rng, 0, PNG_ONLY), usable=False, damage=damage)
            pending_faults.append((kind, members[1][0], 'prepare', reason, members[0][0]))
            pairs.insert(rng.randrange(len(pairs) + 1), members)
        if self.hub:
            members = self.pair(picture(rng, 0, PNG_ONLY), usable=False)
            pending_faults.append(('json-without-image', members[1][0], 'prepare', 'no-image', members[0][0]))
            pairs.insert(rng.randrange(len(pairs) + 1), members[1:])  # its image is in no tar
            renamed = self.pair(picture(rng, 1, JPEG_ONLY), image_name='not-this-name.png')
            pairs.insert(rng.randrange(len(pairs) + 1), renamed)


def _without_size(meta: dict) -> bytes:
    return json_bytes({k: v for k, v in meta.items() if k not in ('width', 'height', 'resolution')})


def _malformed(meta: dict) -> bytes:
    return json_bytes(meta)[:-20]
