"""laion6m's download: img2dataset tars of images and metadata, tars of caption json, and data.json."""
from __future__ import annotations

import itertools
import random
from pathlib import Path

from src.synthetic.downloads.parts import (Download, Expected, Fault, JPEG_ONLY, Picture, draw_captions,
                                           hub_extras, json_bytes, picture, split_chunks, tar_bytes, write_file)


def make_laion6m(root, n: int = 12, seed: int = 0, faults: bool = True, hostile: bool = False,
                 truncated_tar: bool = False, shards: int = 3, with_index: bool = True) -> Expected:
    """``raw/<k>.tar`` in img2dataset style (``<key>.jpg`` + ``<key>.json`` with the original
    metadata, whose ``caption`` is the alt text), ``captions/<k>.tar`` of ``<key>.json`` caption
    files, and ``data.json`` (``{"image": "<key>.jpg", "annotation": "<key>.json"}``, relative to
    ``raw/`` and ``captions/``) unless ``with_index=False``.

    Caption json holds ``re_caption`` (the expected caption) and ``caption`` (another text, in
    ``other_captions``); every fifth holds only ``caption``, which is then the expected one: the
    config's ``cap_source=['re_caption', 'caption']`` must fall back. A pairing tool must pair with
    ``captions/``, not with the metadata json beside the image in ``raw/``.

    Faults (each also an entry of data.json): a caption json whose image is missing ('prepare',
    'no-image'); an image without caption json ('prepare', 'no-caption'); a malformed caption json
    ('prepare', 'unreadable json').
    """
    laion = _Laion6m(Path(root), seed, n)
    samples, pending_faults = [], []  # samples: (key, image or None, caption json or None)
    for i in range(n):
        key = next(laion.keys)
        samples.append((key, picture(laion.rng, i, JPEG_ONLY), laion.caption_json(i, key)))
    if faults:
        samples += laion.faulty_samples(pending_faults)
        laion.rng.shuffle(samples)
    laion.write_tars(samples, shards, hostile, pending_faults)
    if truncated_tar:
        samples += laion.truncated_tar()
    if with_index:
        index = [{'image': f'{key}.jpg', 'annotation': f'{key}.json'} for key, _, _ in samples]
        write_file(laion.expected.root / 'data.json', json_bytes(index))
    hub_extras(laion.expected.root)
    return laion.expected


class _Laion6m:
    """One laion6m download being drawn: its random source, captions and keys, and its Expected."""

    def __init__(self, root: Path, seed: int, n: int):
        self.rng = random.Random(f'laion6m-{seed}')
        self.expected = Expected('laion6m', root, image_folder='raw', data_path='data.json', cap_folder='captions')
        self.download = Download(self.expected, self.expected.root / 'raw')
        self.captions = iter(draw_captions(self.rng, 2 * (n + 6)))
        self.keys = (f'{k:09d}' for k in itertools.count(self.rng.randrange(10 ** 6)))

    def caption_json(self, i: int, key: str, usable: bool = True) -> bytes:
        """The caption json of sample ``i``: every fifth holds only ``caption``."""
        recaption, other = next(self.captions), f'Stock photo of {next(self.captions)}'
        if usable:
            self.expected.samples[f'{key}.jpg'] = recaption
        if i % 5 == 4:
            return json_bytes({'caption': recaption})
        if usable:
            self.expected.other_captions.setdefault('caption', {})[f'{key}.jpg'] = other
        return json_bytes({'re_caption': recaption, 'caption': other})

    def faulty_samples(self, pending_faults: list) -> list[tuple]:
        """The samples of the three faults; each fault is added to ``pending_faults``."""
        samples = []
        for kind, member, reason, has_image, caption in [
                ('caption-without-image', 'captions', 'no-image', False, True),
                ('image-without-caption', 'raw', 'no-caption', True, None),
                ('malformed-caption-json', 'captions', 'unreadable json', True, b'{"re_caption": "a cat on')]:
            key = next(self.keys)
            if caption is True:
                caption = self.caption_json(0, key, usable=False)
            samples.append((key, picture(self.rng, 0, JPEG_ONLY) if has_image else None, caption))
            pending_faults.append((kind, key, member, reason))
        return samples

    def write_tars(self, samples: list[tuple], shards: int, hostile: bool, pending_faults: list) -> None:
        """``raw/<k>.tar`` and ``captions/<k>.tar`` of ``samples``, and the faults, now that their tars are known."""
        tar_of = {}  # (folder, key) -> the tar holding that key's member
        for k, chunk in enumerate(split_chunks(samples, shards)):
            self.download.tar(f'raw/{k:05d}.tar', [m for key, image, _ in chunk if image
                                                   for m in _raw_members(key, image)], hostile and k == 0)
            write_file(self.expected.root / f'captions/{k:05d}.tar',
                       tar_bytes([(f'{key}.json', cap) for key, _, cap in chunk if cap is not None]))
            tar_of.update({(folder, key): f'{folder}/{k:05d}.tar' for key, _, _ in chunk
                           for folder in ('raw', 'captions')})
        for kind, key, folder, reason in pending_faults:
            member = f'{key}.jpg' if folder == 'raw' else f'{key}.json'
            self.expected.faults.append(Fault(kind, f'{tar_of[folder, key]}:{member}', 'prepare', reason,
                                              f'{key}.jpg'))

    def truncated_tar(self) -> list[tuple]:
        """``raw/99999.tar``, cut in its second image, and its captions; returns its two samples."""
        kept_key, cut_key = next(self.keys), next(self.keys)
        kept, cut = picture(self.rng, 2, JPEG_ONLY), picture(self.rng, 3, JPEG_ONLY)
        members = _raw_members(kept_key, kept) + _raw_members(cut_key, cut)[::-1]
        self.download.truncated_tar('raw/99999.tar', members, f'{cut_key}.jpg')
        write_file(self.expected.root / 'captions/99999.tar', tar_bytes(
            [(f'{kept_key}.json', self.caption_json(0, kept_key)),
             (f'{cut_key}.json', self.caption_json(0, cut_key, usable=False))]))
        return [(kept_key, kept, None), (cut_key, cut, None)]


def _raw_members(key: str, image: Picture) -> list[tuple[str, bytes]]:
    """An img2dataset sample: the image and its metadata json (whose ``caption`` is the alt text)."""
    meta = {'url': f'https://images.example.com/{key}.jpg', 'key': key, 'status': 'success',
            'error_message': None, 'caption': f'alt text {key}', 'width': image.width,
            'height': image.height, 'original_width': image.width * 2,
            'original_height': image.height * 2, 'exif': None}
    return [(f'{key}.jpg', image.data), (f'{key}.json', json_bytes(meta))]
