"""Indexes of {"image", "annotation"} pairs (laion6m, redcaps5m, BLIP3o-60k): checked or built.

A downloaded index is checked against the files and entries whose image or annotation is missing
are dropped. The download is kept as ``<index>.orig`` the first time that changes anything, and
later runs check the ``.orig`` again: a drop caused by a tar that was not extracted yet is undone
once it is, and nothing from the download is ever lost. An index that was not downloaded is built
by pairing each image with the caption file of the same name, and rebuilt on every run.
"""
from __future__ import annotations

import functools
import json
import os
import posixpath
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

from src.datasets.index.captions import parse_json
from src.datasets.errors import IndexFormatError, SampleError
from src.datasets.progress import tqdm
from src.datasets.storage.files import link_outside, unsafe_path
from src.datasets.storage.atomic import WriteOutcome, atomic_write, write_json, write_json_array
from src.prepare.metadata import carried_columns
from src.prepare.report import Drops, Report
from src.prepare.runner import Files

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.gif', '.tif', '.tiff')
CHUNK = 100_000
CHECK_THREADS = 16  # caption files read at once while checking them
CHECK_CHUNK = 4096  # of them handed to the threads at a time (not a future per caption of millions)


@dataclass(frozen=True)
class PairLayout:
    """Where a dataset keeps things, as folders relative to its root.

    ``image_folder`` / ``cap_folder``: what the config's image_folder / cap_folder point at (index
    paths are relative to them); ``caption_folders``: where caption files may be, in order of
    preference; ``caption_ext``: the caption file's extension.
    """

    index: str
    image_folder: str
    cap_folder: str
    caption_folders: tuple[str, ...]
    caption_ext: str


def load_json_array(path: str, root: str | None = None) -> list:
    """The download's JSON index at ``path``: a regular file inside ``root`` (by default its own
    folder), never read through a symbolic link out of it (the link rule)."""
    folder = root if root is not None else os.path.dirname(os.path.abspath(path))
    if link_outside(path, folder):
        raise IndexFormatError(f'{path}: a symbolic link out of {folder}: not read (remove it, then re-run)')
    if not os.path.isfile(path):  # a FIFO would hang the reader, a device read without end
        raise IndexFormatError(f'{path}: not a regular file')
    try:
        with open(path, encoding='utf-8-sig') as f:  # a byte order mark, as some editors write, is fine
            records = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise IndexFormatError(f'{path}: not valid JSON: {e}') from None
    except RecursionError:
        raise IndexFormatError(f'{path}: nested deeper than the JSON parser can follow: not an index') from None
    if not isinstance(records, list):
        raise IndexFormatError(f'{path}: expected a JSON array of records, found {type(records).__name__}')
    return records


def caption_problem(files: Files, path: str) -> tuple[str | None, dict]:
    """Why the caption file ``path`` cannot be used ('unreadable json' / 'unreadable caption', or
    why it cannot be read: 'not-a-file', 'too-large'), or None; and the metadata a ``.json`` one
    carries (``src.prepare.metadata``: numbers and short texts, kept in the index)."""
    try:
        data = files.read(path)
    except SampleError as err:
        return err.reason, {}
    if path.lower().endswith('.json'):
        try:
            obj = parse_json(data, path)
        except SampleError:  # malformed, not UTF-8, or nested past the parser's depth
            return 'unreadable json', {}
        return (None, carried_columns(obj)) if isinstance(obj, dict) else ('unreadable json', {})
    try:
        data.decode('utf-8')
    except UnicodeDecodeError:
        return 'unreadable caption', {}
    return None, {}


def annotation_folder(records: list, files: Files, layout: PairLayout) -> str:
    """The folder the index's annotations are relative to: ``cap_folder`` if any of them is there,
    else the first of ``caption_folders`` that holds any (upstream configs disagree: the guide reads
    laion6m captions from ``captions/``, OpenUni from ``raw/``). One folder for the whole index, as
    when pairing: never re-captions for some images and the metadata beside the image for others."""
    folders = (layout.cap_folder,) + tuple(f for f in layout.caption_folders if f != layout.cap_folder)
    annotations = [record['annotation'] for record in records
                   if isinstance(record, dict) and isinstance(record.get('annotation'), str)]
    for folder in folders:
        if any(posixpath.normpath(f'{folder}/{annotation}') in files for annotation in annotations):
            return folder
    return layout.cap_folder


def check_pairs(records: list, files: Files, layout: PairLayout, drops: Drops) -> tuple[list, int]:
    """The records whose image exists and whose annotation (when named) exists and is readable,
    and how many annotations were rewritten to be relative to ``cap_folder`` (a downloaded index is
    otherwise kept as it is: no metadata is added to it)."""
    folder = annotation_folder(records, files, layout)
    checked = []  # (record, its caption path or None), in order: the reads come next, in parallel
    for number, record in enumerate(records):
        image = record.get('image') if isinstance(record, dict) else None
        annotation = record.get('annotation') if isinstance(record, dict) else None
        if not isinstance(image, str) or not isinstance(annotation, (str, type(None))):
            drops.add('bad-record', f'entry {number}: {str(record)[:80]}')
            continue
        if unsafe_path(image) or (annotation is not None and unsafe_path(annotation)):
            drops.add('unsafe-path', f'entry {number}: {image!r}, {annotation!r}')  # would leave its folder
            continue
        if posixpath.normpath(f'{layout.image_folder}/{image}') not in files:
            drops.add('no-image', image)
            continue
        caption = None if annotation is None else posixpath.normpath(f'{folder}/{annotation}')
        if caption is not None and caption not in files:
            drops.add('no-caption', annotation)
            continue
        checked.append((record, caption))
    kept, relocated = [], 0
    captions = [caption for _, caption in checked if caption is not None]
    problems = iter(tqdm(caption_problems(files, captions), total=len(captions), unit='caption',
                         desc=f'checking the captions of {layout.index}'))
    for record, caption in checked:
        if caption is not None:
            problem, _ = next(problems)
            if problem:
                drops.add(problem, record['annotation'])
                continue
            relative = posixpath.relpath(caption, layout.cap_folder)
            if relative != posixpath.normpath(record['annotation']):
                record, relocated = {**record, 'annotation': relative}, relocated + 1
        kept.append(record)
    return kept, relocated


def caption_problems(files: Files, paths: list[str]) -> Iterator[tuple[str | None, dict]]:
    """``caption_problem`` of each of ``paths``, in order, read by parallel threads: the reads are
    I/O (a network file system, a tar member index), one after another they were the build's time."""
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        for start in range(0, len(paths), CHECK_CHUNK):
            yield from pool.map(functools.partial(caption_problem, files), paths[start:start + CHECK_CHUNK])


def pair_by_name(files: Files, layout: PairLayout, drops: Drops) -> tuple[list, str]:
    """One record per image under ``image_folder`` with a readable caption file of the same name
    (path without extension) in the caption folder; returns (records, that folder).

    The caption folder is the first of ``caption_folders`` that holds any caption file: captions
    of one kind for the whole dataset, never re-captions for some images and the metadata beside
    the image for the others.
    """
    caption_folder = next((folder for folder in layout.caption_folders
                           if any(p.startswith(folder + '/') and p.endswith(layout.caption_ext)
                                  for p in files.paths)), layout.caption_folders[0])
    image_prefix = layout.image_folder + '/'
    images = sorted(p for p in files.paths
                    if p.startswith(image_prefix) and p.lower().endswith(IMAGE_EXTENSIONS))
    candidates, paired = [], set()
    for path in images:
        stem = os.path.splitext(path[len(image_prefix):])[0]
        caption = f'{caption_folder}/{stem}{layout.caption_ext}'
        if caption not in files:
            drops.add('no-caption', path)
            continue
        paired.add(caption)
        candidates.append((path, caption))
    records = []
    problems = caption_problems(files, [caption for _, caption in candidates])
    for (path, caption), (problem, columns) in zip(candidates, tqdm(problems, total=len(candidates), unit='image',
                                                                    desc=f'pairing {layout.index}')):
        if problem:
            drops.add(problem, caption)
            continue
        records.append({**columns, 'image': path[len(image_prefix):],
                        'annotation': posixpath.relpath(caption, layout.cap_folder)})
    drops.add_many('no-image', sorted(p for p in files.paths if p.startswith(caption_folder + '/')
                                      and p.endswith(layout.caption_ext) and p not in paired))
    return records, caption_folder


def build_pair_index(files: Files, report: Report, layout: PairLayout) -> None:
    """Check the downloaded index (or its kept original), or build one by pairing names."""
    path = os.path.join(files.root, layout.index)
    original = path + '.orig'
    built_marker = os.path.join(files.root, '.prepare', layout.index + '.built.json')
    index = report.add_index(path)
    if os.path.exists(built_marker) or not (os.path.exists(path) or os.path.exists(original)):
        records, caption_folder = pair_by_name(files, layout, index.drops)
        write_json(built_marker, {'caption_folder': caption_folder, 'caption_ext': layout.caption_ext})
        index.note = f'built by pairing each image with the {layout.caption_ext} of the same name in {caption_folder}/'
    else:
        source = original if os.path.exists(original) else path
        downloaded = load_json_array(source, files.root)
        records, relocated = check_pairs(downloaded, files, layout, index.drops)
        index.note = f'checked {len(downloaded)} entries of {source} against the files'
        if relocated:
            index.note += (f'; {relocated} annotations found outside {layout.cap_folder}/ were rewritten '
                           f'relative to it, where the config\'s cap_folder points')
        if len(records) == len(downloaded) and not relocated:
            # Nothing to drop: the index is the download, byte for byte.
            index.entries, index.changed = len(records), copy_file(source, path)
            return
        if source == path:
            copy_file(path, original)
            index.note += f'; the download is kept as {original}'
    index.entries, index.changed = write_json_array(
        path, (records[i:i + CHUNK] for i in range(0, len(records), CHUNK)))


def copy_file(source: str, target: str) -> bool:
    """Copy atomically unless ``target`` already holds the same bytes; return whether it changed."""
    if source == target:
        return False
    outcome = WriteOutcome()
    with atomic_write(target, 'wb', only_if_changed=True, outcome=outcome) as f, open(source, 'rb') as src:
        shutil.copyfileobj(src, f)
    return outcome.changed
