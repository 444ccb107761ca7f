"""Midjourney-v6's download, as its guide leaves it: nested tars of images and two parquet tables."""
from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from src.synthetic.downloads.parts import (Download, Expected, JPEG_ONLY, MIXED, PNG_ONLY, Picture, draw_captions,
                                           hex_id, hub_extras, picture, split_chunks)
from src.synthetic.images import not_an_image


def make_midjourney23m(root, n: int = 12, seed: int = 0, faults: bool = True, hostile: bool = False,
                       truncated_tar: bool = False, shards: int = 3) -> Expected:
    """``raw/images/<a>/<b>/<k>.tar`` (nested folders) of images named by the tables'
    ``filename``, and ``raw/table-1.parquet``, ``raw/table-2.parquet`` (columns filename, prompt,
    width, height; rows shuffled across both tables).

    Faults: a table row whose image is in no tar ('prepare', 'no-image'); an image member that is
    not an image ('load', 'bad-image'); a 64 px wide image ('load', 'too-small'); a 900x88 image
    ('load', 'bad-aspect'). The tool keeps the last three: it checks that files exist, not pixels.
    """
    rng = random.Random(f'midjourney23m-{seed}')
    expected = Expected('midjourney23m', Path(root), image_folder='.', data_path='data.json',
                        cap_folder=None)
    download = Download(expected, expected.root / 'images')
    captions = iter(draw_captions(rng, n + 6))
    rows, members, pending_faults = [], [], []

    def add(image: Picture, usable: bool = True) -> str:
        filename, prompt = f'{hex_id(rng, 16)}{image.ext}', f'{next(captions)} --ar 3:2 --v 5.2'
        rows.append(dict(filename=filename, prompt=prompt, width=image.width, height=image.height))
        if usable:
            expected.samples[f'images/{filename}'] = prompt
        return filename

    for i in range(n):
        image = picture(rng, i, MIXED)
        members.append((add(image), image.data))
    if faults:
        filename = add(picture(rng, 0, PNG_ONLY), usable=False)
        pending_faults.append(('row-without-image', filename, 'prepare', 'no-image', f'images/{filename}'))
        for kind, reason, image in [
                ('corrupt-image', 'bad-image', Picture(not_an_image(), '.png', 512, 512)),
                ('small-image', 'too-small', picture(rng, 0, JPEG_ONLY, size=(64, 300))),
                ('extreme-aspect', 'bad-aspect', picture(rng, 0, JPEG_ONLY, size=(900, 88)))]:
            filename = add(image, usable=False)
            members.insert(rng.randrange(len(members) + 1), (filename, image.data))
            pending_faults.append((kind, filename, 'load', reason, f'images/{filename}'))
    for k, chunk in enumerate(split_chunks(members, shards)):
        download.tar(f'raw/images/{k // 2:04d}/{k % 2:04d}/{k:06d}.tar', chunk, hostile and k == 0)
    if truncated_tar:
        kept, cut = picture(rng, 1, MIXED), picture(rng, 2, MIXED)
        kept_name, cut_name = add(kept), add(cut, usable=False)
        download.truncated_tar('raw/images/9999/0000/999999.tar',
                               [(kept_name, kept.data), (cut_name, cut.data)], f'images/{cut_name}')
    rng.shuffle(rows)
    schema = pa.schema([('filename', pa.string()), ('prompt', pa.string()), ('width', pa.int64()),
                        ('height', pa.int64())])
    table_of = {}
    for t, chunk in enumerate(split_chunks(rows, 2), start=1):
        pq.write_table(pa.Table.from_pylist(chunk, schema=schema), expected.root / f'raw/table-{t}.parquet')
        table_of.update((row['filename'], f'raw/table-{t}.parquet') for row in chunk)
    for kind, filename, stage, reason, image in pending_faults:
        where = filename if filename in download.member_tars else f'{table_of[filename]}:{filename}'
        download.fault(kind, where, stage, reason, image)
    hub_extras(expected.root / 'raw')
    return expected
