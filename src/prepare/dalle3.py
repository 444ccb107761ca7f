"""dalle3: the per-image json files -> dalle3.parquet (width, height, caption, filename), and the
``<key>.txt`` caption files when asked, as the guide's compile.py / extract-captions.py do.

The hub's tars are webdataset shards: a sample is the members sharing a key (the path without its
last extension), ``<key>.json`` plus one image, ``.jpg``, ``.jpeg`` or ``.png``. The json's
``image_name`` is not trusted: ``filename`` is the member that is really there, and the rows whose
``image_name`` says otherwise are counted in the summary.
"""
from __future__ import annotations

import os
import posixpath

import pyarrow as pa
import pyarrow.parquet as pq

from src.datasets.index.captions import is_blank, parse_json
from src.datasets.errors import SampleError
from src.datasets.progress import tqdm
from src.datasets.storage.atomic import WriteOutcome, atomic_write
from src.prepare.report import Report
from src.prepare.runner import Files

DATA_FOLDER = 'data'
INDEX = 'dalle3.parquet'
DEFAULT_CAPTION_FIELD = 'short_caption'
# The caption fields of the dataset card; the '2' ones are lists in one revision (first element used).
CAPTION_FIELDS = ('short_caption', 'long_caption', 'short_caption2', 'long_caption2', 'original_prompt')
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')  # in order of preference when a key has several
SCHEMA = pa.schema([('width', pa.int64()), ('height', pa.int64()),
                    ('caption', pa.string()), ('filename', pa.string())])


def caption_of(content: dict, caption_field: str) -> str | None:
    """The caption field's text; a list-valued field gives its first element."""
    value = content.get(caption_field)
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) and not is_blank(value) else None


def parse_row(content, image: str, caption_field: str) -> tuple[str | None, dict | None]:
    """(drop reason, None) or (None, the table row) for one json's content, whose sample's image
    member is ``image`` (relative to ``data/``)."""
    if not isinstance(content, dict):
        return 'unreadable json', None
    if 'width' not in content:
        return 'no width', None  # the guide skips these too: they are not DALL-E 3 samples
    caption = caption_of(content, caption_field)
    if caption is None:
        return 'no-caption', None
    try:
        width, height = int(content['width']), int(content['height'])
    except (KeyError, TypeError, ValueError, OverflowError):  # missing, null, text, inf or nan
        return 'bad-size', None
    if width <= 0 or height <= 0 or max(width, height) >= 2 ** 31:
        return 'bad-size', None
    return None, {'width': width, 'height': height, 'caption': caption, 'filename': image}


def samples_by_key(paths) -> tuple[dict, dict]:
    """({key: json path}, {key: image path}) of the webdataset samples under ``data/``: the key is
    the path without its last extension; a key with several images keeps the preferred one."""
    prefix = DATA_FOLDER + '/'
    jsons, images = {}, {}
    for path in paths:
        if not path.startswith(prefix):
            continue
        key, ext = posixpath.splitext(path)
        ext = ext.lower()
        if ext == '.json':
            jsons[key] = path
        elif ext in IMAGE_EXTENSIONS:
            other = images.get(key)
            if other is None or IMAGE_EXTENSIONS.index(ext) < IMAGE_EXTENSIONS.index(posixpath.splitext(other)[1].lower()):
                images[key] = path
    return jsons, images


def build_index(files: Files, report: Report, *, caption_field: str = DEFAULT_CAPTION_FIELD,
                write_txt: bool = False) -> None:
    index = report.add_index(os.path.join(files.root, INDEX))
    jsons, images = samples_by_key(files.paths)
    rows = []
    for key in tqdm(sorted(jsons), desc='dalle3: reading json', unit='file'):
        path = jsons[key]
        try:
            content = parse_json(files.read(path), path)
        except SampleError:  # malformed, not UTF-8, nested past the parser's depth, not a file
            index.drops.add('unreadable json', path)
            continue
        image = images.get(key)
        if image is None:
            index.drops.add('no-image', path)
            continue
        filename = image[len(DATA_FOLDER) + 1:]
        reason, row = parse_row(content, filename, caption_field)
        if reason:
            index.drops.add(reason, path)
            continue
        if isinstance(content, dict) and content.get('image_name') != filename:
            index.remarks.add('image_name differs from its member (indexed under the member)',
                              f'{path}: {content.get("image_name")!r}')
        rows.append(row)
        if write_txt:
            write_caption_txt(files.root, row)
    index.drops.add_many('no-json', sorted(image for key, image in images.items() if key not in jsons))
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    outcome = WriteOutcome()
    with atomic_write(index.path, 'wb', only_if_changed=True, outcome=outcome) as f:
        pq.write_table(table, f)
    index.entries, index.changed = len(rows), outcome.changed
    if write_txt:
        index.note = f'captions ({caption_field}) also written to {DATA_FOLDER}/<key>.txt'


def write_caption_txt(root: str, row: dict) -> None:
    """``data/<image key>.txt`` holding the caption, rewritten only when it differs."""
    path = os.path.join(root, DATA_FOLDER, os.path.splitext(row['filename'])[0] + '.txt')
    with atomic_write(path, only_if_changed=True, durable=False) as f:
        f.write(row['caption'])
