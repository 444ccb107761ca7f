"""megalith-10m's download: tars of images, tars of caption json, and its index."""
from __future__ import annotations

import itertools
import random
from pathlib import Path

from src.synthetic.downloads.parts import (Download, Expected, Fault, JPEG_ONLY, MOSTLY_JPEG, draw_captions,
                                           hub_extras, json_bytes, picture, split_chunks, tar_bytes, write_file)


MEGALITH_CAPTION_KEYS = ('caption', 'caption_internlm2_short', 'caption_llava')


def make_megalith10m(root, n: int = 12, seed: int = 0, faults: bool = True, hostile: bool = False,
                     truncated_tar: bool = False, shards: int = 3, with_index: bool = True) -> Expected:
    """megalith-10m, the images of OpenUni's editing pretraining (``ReconstructDataset``) and of VGT's
    text-to-image mix: ``raw/<k>.tar`` of ``<key>.jpg`` (each extracted into ``raw/<k>/``),
    ``captions/<k>.tar`` of ``<k>/<key>.json`` captions (``caption``, ``caption_internlm2_short``,
    ``caption_llava``; extracted in place), and ``megalith10m_all.json`` (``{"image": "<k>/<key>.jpg",
    "annotation": "<k>/<key>.json"}``, relative to ``raw/`` and ``captions/``) unless ``with_index=False``.

    Faults (each also an entry of the index): an image without caption json ('prepare',
    'no-caption'); a caption json without image ('prepare', 'no-image'); a malformed caption json
    ('prepare', 'unreadable json').
    """
    rng = random.Random(f'megalith10m-{seed}')
    expected = Expected('megalith10m', Path(root), image_folder='raw', data_path='megalith10m_all.json',
                        cap_folder='captions')
    download = Download(expected, expected.root / 'raw' / '00000')
    captions = iter(draw_captions(rng, 3 * (n + 6)))
    keys = (f'{k:08d}' for k in itertools.count(rng.randrange(10 ** 6)))
    samples = []  # (key, image or None, caption json bytes or None, fault (kind, reason) or None)

    def caption_json(key: str, usable: bool = True) -> bytes:
        texts = {name: next(captions) for name in MEGALITH_CAPTION_KEYS}
        if usable:
            expected.samples[key] = texts['caption']  # completed with the shard below
        return json_bytes(texts)

    for i in range(n):
        key = next(keys)
        samples.append((key, picture(rng, i, MOSTLY_JPEG), caption_json(key), None))
    if faults:
        for kind, reason, image, caption in [('image-without-caption', 'no-caption', True, None),
                                             ('caption-without-image', 'no-image', False, True),
                                             ('malformed-caption-json', 'unreadable json', True, b'{"caption": "a')]:
            key = next(keys)
            samples.append((key, picture(rng, 0, JPEG_ONLY) if image else None,
                            caption_json(key, usable=False) if caption is True else caption, (kind, reason)))
        rng.shuffle(samples)
    index = []
    for k, chunk in enumerate(split_chunks(samples, shards)):
        index += _shard(download, f'{k:05d}', chunk, hostile and k == 0)
    if truncated_tar:
        stem = '99999'
        kept_key, cut_key = next(keys), next(keys)
        kept, cut = picture(rng, 1, JPEG_ONLY), picture(rng, 2, JPEG_ONLY)
        download.truncated_tar(f'raw/{stem}.tar', [(f'{kept_key}.jpg', kept.data), (f'{cut_key}.jpg', cut.data)],
                               f'{stem}/{cut_key}.jpg')
        write_file(expected.root / f'captions/{stem}.tar', tar_bytes(
            [(f'{stem}/{kept_key}.json', caption_json(kept_key)), (f'{stem}/{cut_key}.json', caption_json(cut_key, False))]))
        expected.samples[f'{stem}/{kept_key}.jpg'] = expected.samples.pop(kept_key)
        index += [{'image': f'{stem}/{key}.jpg', 'annotation': f'{stem}/{key}.json'} for key in (kept_key, cut_key)]
    if with_index:
        write_file(expected.root / 'megalith10m_all.json', json_bytes(index))
    hub_extras(expected.root)
    return expected


def _shard(download: Download, stem: str, chunk: list, hostile: bool) -> list[dict]:
    """Write ``raw/<stem>.tar`` and ``captions/<stem>.tar`` of ``chunk`` (samples as ``make_megalith10m``
    draws them), file their samples and faults under ``<stem>/``; return their index entries."""
    expected, index = download.expected, []
    download.tar(f'raw/{stem}.tar', [(f'{key}.jpg', image.data) for key, image, _, _ in chunk if image], hostile)
    write_file(expected.root / f'captions/{stem}.tar',
               tar_bytes([(f'{stem}/{key}.json', caption) for key, _, caption, _ in chunk if caption is not None]))
    for key, image, caption, fault in chunk:
        relative = f'{stem}/{key}.jpg'
        if key in expected.samples:
            expected.samples[relative] = expected.samples.pop(key)
        if fault:
            where = f'raw/{stem}.tar:{key}.jpg' if image else f'captions/{stem}.tar:{stem}/{key}.json'
            expected.faults.append(Fault(fault[0], where, 'prepare', fault[1], relative))
        index.append({'image': relative, 'annotation': f'{stem}/{key}.json'})
    return index
