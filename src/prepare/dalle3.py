"""dalle3: the per-image json files -> dalle3.parquet (width, height, caption, filename), and the
``<stem>.txt`` caption files when asked, as the guide's compile.py / extract-captions.py do."""
from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from src.prepare.atomic import WriteOutcome, atomic_write
from src.prepare.report import Report
from src.prepare.runner import Files

DATA_FOLDER = 'data'
INDEX = 'dalle3.parquet'
DEFAULT_CAPTION_FIELD = 'short_caption'
SCHEMA = pa.schema([('width', pa.int64()), ('height', pa.int64()),
                    ('caption', pa.string()), ('filename', pa.string())])


def parse_row(content, files: Files, caption_field: str) -> tuple[str | None, dict | None]:
    """(drop reason, None) or (None, the table row) for one json file's content."""
    if not isinstance(content, dict):
        return 'unreadable json', None
    if 'width' not in content:
        return 'no width', None  # the guide skips these too: they are not DALL-E 3 samples
    filename = content.get('image_name')
    if not isinstance(filename, str) or f'{DATA_FOLDER}/{filename}' not in files:
        return 'no-image', None
    caption = content.get(caption_field)
    if not isinstance(caption, str):
        return 'no-caption', None
    try:
        width, height = int(content['width']), int(content['height'])
    except (KeyError, TypeError, ValueError):
        return 'bad-size', None
    return None, {'width': width, 'height': height, 'caption': caption, 'filename': filename}


def build_index(files: Files, report: Report, *, caption_field: str = DEFAULT_CAPTION_FIELD,
                write_txt: bool = False) -> None:
    index = report.add_index(os.path.join(files.root, INDEX))
    prefix = DATA_FOLDER + '/'
    jsons = sorted(p for p in files.paths if p.startswith(prefix) and p.endswith('.json'))
    rows = []
    for path in tqdm(jsons, desc='dalle3: reading json', unit='file'):
        try:
            content = json.loads(files.read(path))
        except (ValueError, UnicodeDecodeError):
            index.drops.add('unreadable json', path)
            continue
        reason, row = parse_row(content, files, caption_field)
        if reason:
            index.drops.add(reason, path)
            continue
        rows.append(row)
        if write_txt:
            write_caption_txt(files.root, row)
    json_stems = {p[:-len('.json')] for p in jsons}
    index.drops.add_many('no-json', sorted(p for p in files.paths if p.startswith(prefix)
                                            and p.endswith('.png') and p[:-len('.png')] not in json_stems))
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    outcome = WriteOutcome()
    with atomic_write(index.path, 'wb', only_if_changed=True, outcome=outcome) as f:
        pq.write_table(table, f)
    index.entries, index.changed = len(rows), outcome.changed
    if write_txt:
        index.note = f'captions ({caption_field}) also written to {DATA_FOLDER}/<stem>.txt'


def write_caption_txt(root: str, row: dict) -> None:
    """``data/<image stem>.txt`` holding the caption, rewritten only when it differs."""
    path = os.path.join(root, DATA_FOLDER, os.path.splitext(row['filename'])[0] + '.txt')
    with atomic_write(path, only_if_changed=True, durable=False) as f:
        f.write(row['caption'])
