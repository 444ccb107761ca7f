"""The URL route of laion6m / redcaps5m (and Conceptual Captions): parquets of URLs a local server serves."""
from __future__ import annotations

import math
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from src.synthetic.downloads.parts import (Expected, Fault, MOSTLY_JPEG, draw_captions, hex_id, hub_extras,
                                           picture, split_chunks)


RECAP_INDEX = {'cc3m': 'cc3m_densecaps.json'}  # the index each URL route writes; data.json for the others
RECAP_COLUMNS = {'cc3m': ('image_url', 'caption')}  # (URL column, caption column); ('url', 're_caption') else


def make_recap(name: str, root, server, n: int = 8, seed: int = 0, faults: bool = True, parquets: int = 2,
               samples_per_shard: int = 4) -> Expected:
    """The URL route of laion6m / redcaps5m, as upstream ships it today: ``parquets/*.parquet`` of
    ``url``, ``re_caption`` (the expected caption), ``caption`` (the alt text or Reddit title, in
    ``other_captions``) and a few more columns, whose URLs ``server`` (a
    :class:`~src.synthetic.url_server.UrlServer`) serves; plus the hub's README and .cache/.

    ``Expected.samples`` names each image as img2dataset writes it with ``samples_per_shard``:
    ``<shard>/<key>.jpg``, the shards numbered on across the parquets in name order.
    ``name='cc3m'``: Conceptual Captions' parquet instead (``image_url``, ``caption``), as Harmon's
    image-to-text config reads it (index ``cc3m_densecaps.json``).
    Faults ('prepare', reason 'download failed'): a URL that answers 404, one whose body is an
    HTML page, one that answers after 3 s (a timeout for a client that waits less).
    """
    from src.synthetic.url_server import Response

    rng = random.Random(f'{name}-recap-{seed}')
    url_col, caption_col = RECAP_COLUMNS.get(name, ('url', 're_caption'))
    expected = Expected(name, Path(root), image_folder='raw', data_path=RECAP_INDEX.get(name, 'data.json'),
                        cap_folder='raw')
    captions = iter(draw_captions(rng, 2 * (n + 3)))
    rows = []  # (row of the parquet, fault kind or None)
    for i in range(n):
        image = picture(rng, i, MOSTLY_JPEG)
        path = f'/{name}/{hex_id(rng, 10)}{image.ext}'
        content_type = {'.jpg': 'image/jpeg', '.png': 'image/png', '.webp': 'image/webp'}[image.ext]
        rows.append(({url_col: server.add(path, Response(image.data, content_type=content_type))}, None))
    if faults:
        for kind, response in [('http-404', None), ('not-an-image', Response(b'<html>gone</html>', content_type='text/html')),
                               ('timeout', Response(b'late', delay=3.0))]:
            path = f'/{name}/{hex_id(rng, 10)}.jpg'
            rows.insert(rng.randrange(len(rows) + 1),
                        ({url_col: server.add(path, response) if response else server.url(path)}, kind))
    for row, _ in rows:
        if caption_col == 're_caption':
            row.update(re_caption=next(captions), caption=f'alt text: {next(captions)}', aesthetic=rng.random())
        else:
            row[caption_col] = next(captions)
    digits = max(1, math.ceil(math.log10(samples_per_shard)))
    shard = 0
    (expected.root / 'parquets').mkdir(parents=True, exist_ok=True)
    for part, chunk in enumerate(split_chunks(rows, parquets)):
        pq.write_table(pa.Table.from_pylist([row for row, _ in chunk]),
                       expected.root / f'parquets/part-{part:05d}.parquet')
        for first in range(0, len(chunk), samples_per_shard):
            for offset, (row, fault) in enumerate(chunk[first:first + samples_per_shard]):
                image = f'{shard:05d}/{shard * 10 ** digits + offset:0{5 + digits}d}.jpg'
                if fault:
                    expected.faults.append(Fault(fault, row[url_col], 'prepare', 'download failed', image))
                else:
                    expected.samples[image] = row[caption_col]
                    if caption_col == 're_caption':
                        expected.other_captions.setdefault('caption', {})[image] = row['caption']
            shard += 1
    hub_extras(expected.root / 'parquets')  # the guides download the repository into parquets/
    return expected
