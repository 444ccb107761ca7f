"""BLIP3o-60k's download: the hub's eleven category tars of images and .txt captions, and data.json."""
from __future__ import annotations

import random
from pathlib import Path

from src.synthetic.downloads.parts import (Download, Expected, Fault, JPEG_ONLY, MIXED, Picture, draw_captions,
                                           hex_id, hub_extras, json_bytes, picture, split_chunks, write_file)


# The hub's eleven tars are named by category.
BLIP3O60K_TARS = ('dalle3', 'geneval_train', 'human_gestures', 'journeyDB', 'landmarks', 'objects',
                  'occupations', 'scenes', 'sports', 'text_1', 'text_2')


def make_blip3o60k(root, n: int = 12, seed: int = 0, faults: bool = True, hostile: bool = False,
                   truncated_tar: bool = False, shards: int = 3, with_index: bool = True) -> Expected:
    """``raw/<category>.tar`` (named as on the hub: ``dalle3.tar``, ``geneval_train.tar``, ...) of
    ``<id>.<jpg|png|webp>`` + ``<id>.txt`` captions (with the stray
    whitespace real files have: the expected caption is stripped), extracted by the tool into
    ``raw/<stem>/``; and ``data.json`` (``{"image": "<stem>/<id>.jpg", "annotation":
    "<stem>/<id>.txt"}``, relative to ``raw/``) unless ``with_index=False``.

    Faults (each also an entry of data.json): an image without .txt ('prepare', 'no-caption'); a
    .txt that is not UTF-8 ('prepare', 'unreadable caption').
    """
    rng = random.Random(f'blip3o60k-{seed}')
    expected = Expected('blip3o60k', Path(root), image_folder='raw', data_path='data.json',
                        cap_folder='raw')
    download = Download(expected, expected.root / 'raw' / BLIP3O60K_TARS[0])
    captions = iter(draw_captions(rng, n + 4))
    # (id, image, .txt bytes or None, expected caption, or (kind, reason) of a fault, or None: cut)
    samples = []

    def sample(image: Picture) -> tuple:
        text = next(captions)
        padded = f'{text}\n' if len(samples) % 3 else f'  {text} \n\n'
        return hex_id(rng, 12), image, padded.encode(), text

    for i in range(n):
        samples.append(sample(picture(rng, i, MIXED)))
    if faults:
        for kind, reason, caption in [('image-without-caption', 'no-caption', None),
                                      ('caption-not-utf8', 'unreadable caption', b'\xff\xfe caf\xe9 \x80\n')]:
            samples.insert(rng.randrange(len(samples) + 1),
                           (hex_id(rng, 12), picture(rng, 0, JPEG_ONLY), caption, (kind, reason)))
    index = []
    for stem, chunk in zip(BLIP3O60K_TARS, split_chunks(samples, min(shards, len(BLIP3O60K_TARS) - 1))):
        index += _tar(download, stem, chunk, hostile and stem == BLIP3O60K_TARS[0])
    if truncated_tar:
        kept, cut = sample(picture(rng, 1, MIXED)), sample(picture(rng, 2, MIXED))
        index += _tar(download, BLIP3O60K_TARS[-1], [kept, cut[:3] + (None,)], cut=True)
    if with_index:
        write_file(expected.root / 'data.json', json_bytes(index))
    hub_extras(expected.root / 'raw')  # the guide downloads the repository into raw/
    return expected


def _tar(download: Download, stem: str, chunk: list, hostile: bool = False, cut: bool = False) -> list[dict]:
    """Write ``raw/<stem>.tar`` of ``chunk`` (samples as ``make_blip3o60k`` draws them); return its
    data.json entries."""
    expected = download.expected
    members, index = [], []
    for ident, image, caption, outcome in chunk:
        image_path = f'{stem}/{ident}{image.ext}'
        members.append((f'{ident}{image.ext}', image.data))
        if caption is not None:
            members.append((f'{ident}.txt', caption))
        index.append({'image': image_path, 'annotation': f'{stem}/{ident}.txt'})
        if isinstance(outcome, str):
            expected.samples[image_path] = outcome
        elif outcome is not None:
            kind, reason = outcome
            expected.faults.append(Fault(kind, f'raw/{stem}.tar:{ident}{image.ext}', 'prepare',
                                         reason, image_path))
    if cut:  # the cut sample's image is the last member, after its caption
        members[-2:] = members[-2:][::-1]
        download.truncated_tar(f'raw/{stem}.tar', members, index[-1]['image'])
    else:
        download.tar(f'raw/{stem}.tar', members, hostile)
    return index
