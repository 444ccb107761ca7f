"""Miniature raw downloads of the five datasets, laid out exactly as each guide's download leaves them.

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

import hashlib
import io
import itertools
import json
import math
import os
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from src.synthetic.images import EXTENSIONS, encode_image, not_an_image

# The tools' default ``--root`` for each dataset, relative to the working directory.
DEFAULT_ROOTS = {
    'midjourney23m': 'data/midjourney-23m',
    'laion6m': 'data/laion6m',
    'dalle3': 'data/dalle3',
    'redcaps5m': 'data/redcaps5m',
    'blip3o60k': 'data/BLIP3o-60k',
}

HOSTILE_ESCAPE = '../escape.txt'
HOSTILE_ABSOLUTE = '/abs.txt'
HOSTILE_LINK = 'escape-link'
HOSTILE_LINK_TARGET = '/etc/passwd'


@dataclass
class Fault:
    """One injected fault and what a correct preparation + dataset does with it.

    ``kind``: what was injected ('row-without-image', 'corrupt-image', 'unsafe-member', ...).
    ``path``: where, relative to the dataset root (``<tar>:<member>`` for a tar member, or a file).
    ``stage``: 'prepare' = the tool skips it, reports it in its summary with ``reason``, and the index
    it writes does not name ``image``; 'load' = the index names ``image`` and the dataset never
    yields it (filtered out by the index's width/height when it has them, else skipped with
    ``SampleError(reason)`` when read).
    ``image``: the sample's image path as the config sees it (relative to ``image_folder``), or None
    when the fault is no sample (an unsafe member).
    """
    kind: str
    path: str
    stage: str
    reason: str
    image: str | None = None


@dataclass
class Expected:
    """What a correct preparation of one miniature download gives.

    ``samples``: image path (relative to the config's ``image_folder``, as the index names it) ->
    caption the dataset must read for it, for every sample the dataset yields.
    ``image_folder`` / ``data_path`` / ``cap_folder``: as the config uses them, relative to ``root``.
    ``other_captions``: caption field -> {image path -> caption} for the alternative caption fields
    the download holds (dalle3 'long_caption', laion6m 'caption'), to test field selection.
    ``must_not_exist``: absolute paths that hostile members would write on an unsafe extraction.
    """
    name: str
    root: Path
    image_folder: str
    data_path: str
    cap_folder: str | None
    samples: dict[str, str] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    other_captions: dict[str, dict[str, str]] = field(default_factory=dict)
    must_not_exist: list[Path] = field(default_factory=list)

    @property
    def indexed(self) -> set[str]:
        """The image paths the prepared index must hold: usable samples and the 'load' faults."""
        return set(self.samples) | {f.image for f in self.faults if f.stage == 'load'}

    def dropped(self, stage: str) -> list[Fault]:
        """The faults about one sample handled at ``stage`` ('prepare' or 'load')."""
        return [f for f in self.faults if f.stage == stage and f.image is not None]


# ----------------------------------------------------------------------------------------------
# Building blocks: captions, images, tar files.

_SUBJECTS = ['a red fox', 'an old lighthouse', 'a bowl of ramen', 'a cat with green eyes',
             'an astronaut', 'a mountain lake', 'a vintage car', 'a paper crane', 'a city street',
             'a field of sunflowers', 'a wooden cabin', 'a koi pond', 'a steam locomotive',
             'a snowy owl', 'a glass teapot', 'a robot gardener']
_SETTINGS = ['at dawn', 'in the rain', 'under a starry sky', 'on a busy market day', 'in thick fog',
             'at golden hour', 'in deep winter', 'beside a river', 'in 東京 at night',
             'à la façade du café']
_STYLES = ['photorealistic', 'watercolor', 'oil painting', 'pixel art', '35mm film photo',
           'ukiyo-e print', 'digital art', 'pencil sketch']

# (format, mode, EXIF orientation) cycles, per what each dataset really holds.
_MIXED = [('JPEG', 'RGB', None), ('PNG', 'RGBA', None), ('WEBP', 'RGB', None),
          ('JPEG', 'CMYK', None), ('PNG', 'P', None), ('JPEG', 'L', None), ('WEBP', 'RGBA', None),
          ('PNG', 'P-transparent', None), ('JPEG', 'RGB', 6), ('PNG', 'L', None)]
_JPEG = [('JPEG', 'RGB', None), ('JPEG', 'L', None), ('JPEG', 'RGB', 6), ('JPEG', 'CMYK', None)]
_PNG = [('PNG', 'RGB', None), ('PNG', 'RGBA', None), ('PNG', 'L', None), ('PNG', 'P', None),
        ('PNG', 'P-transparent', None)]
_MOSTLY_JPEG = _JPEG + [('PNG', 'RGBA', None), ('WEBP', 'RGB', None)]

_ASPECTS = [0.25, 0.5, 0.75, 1.0, 1.0, 4 / 3, 1.5, 2.0, 3.0, 6.0]


def _captions(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct captions: subject, setting and style drawn without repetition."""
    combos = list(itertools.product(_SUBJECTS, _SETTINGS, _STYLES))
    rng.shuffle(combos)
    return [f'{subject} {setting}, {style}' for subject, setting, style in combos[:count]]


@dataclass
class _Image:
    data: bytes
    ext: str
    width: int   # as displayed, i.e. after the EXIF orientation
    height: int


def _image(rng: random.Random, index: int, kinds: list, size: tuple[int, int] | None = None) -> _Image:
    """An encoded picture of kind ``kinds[index % len(kinds)]``, usable (> 80 px, aspect in (0.1, 10))
    unless ``size`` says otherwise."""
    fmt, mode, orientation = kinds[index % len(kinds)]
    if size is None:
        aspect, long_side = rng.choice(_ASPECTS), rng.randint(160, 640)
        w, h = (long_side, round(long_side / aspect)) if aspect >= 1 else (round(long_side * aspect), long_side)
        size = (max(w, 96), max(h, 96))
    data = encode_image(*size, fmt=fmt, mode=mode, seed=rng.randrange(2 ** 31),
                        exif_orientation=orientation)
    return _Image(data, EXTENSIONS[fmt], *size)


def _hex(rng: random.Random, digits: int) -> str:
    return f'{rng.getrandbits(4 * digits):0{digits}x}'


def _json(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def _file_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 1_700_000_000, 0o644
    return info


def _tar_bytes(members: list[tuple[str, bytes]], hostile: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            tar.addfile(_file_info(name, len(data)), io.BytesIO(data))
        if hostile:
            for name in (HOSTILE_ESCAPE, HOSTILE_ABSOLUTE):
                payload = b'written outside the extraction folder\n'
                tar.addfile(_file_info(name, len(payload)), io.BytesIO(payload))
            link = tarfile.TarInfo(HOSTILE_LINK)
            link.type, link.linkname, link.mtime = tarfile.SYMTYPE, HOSTILE_LINK_TARGET, 1_700_000_000
            tar.addfile(link)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


class _Download:
    """Writes the tars of one download and records the Expected they imply."""

    def __init__(self, expected: Expected, first_extract_dir: Path):
        self.expected = expected
        self.first_extract_dir = first_extract_dir  # where the tool extracts the first tar
        self.member_tars: dict[str, str] = {}

    def tar(self, rel: str, members: list[tuple[str, bytes]], hostile: bool = False) -> None:
        _write(self.expected.root / rel, _tar_bytes(members, hostile))
        self.member_tars.update((name, rel) for name, _ in members)
        if hostile:
            self.expected.must_not_exist += [
                Path(os.path.normpath(self.first_extract_dir / HOSTILE_ESCAPE)), Path(HOSTILE_ABSOLUTE),
                self.first_extract_dir / HOSTILE_LINK]
            self.expected.faults += [Fault('unsafe-member', f'{rel}:{name}', 'prepare', 'unsafe member')
                                     for name in (HOSTILE_ESCAPE, HOSTILE_ABSOLUTE, HOSTILE_LINK)]

    def truncated_tar(self, rel: str, members: list[tuple[str, bytes]], cut_image: str) -> None:
        """Write ``members`` as a tar cut halfway through the last member's data."""
        data = _tar_bytes(members)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            last = tar.getmembers()[-1]
        _write(self.expected.root / rel, data[:last.offset_data + last.size // 2])
        self.expected.faults.append(Fault('truncated-member', f'{rel}:{last.name}', 'prepare',
                                          'truncated', cut_image))

    def fault(self, kind: str, where: str, stage: str, reason: str, image: str | None) -> None:
        """Record a fault; ``where`` is a member name (of a tar written already) or a file."""
        path = f'{self.member_tars[where]}:{where}' if where in self.member_tars else where
        self.expected.faults.append(Fault(kind, path, stage, reason, image))


def _split(items: list, shards: int) -> list[list]:
    """``items`` in ``shards`` contiguous, nearly equal, non-empty chunks."""
    shards = max(1, min(shards, len(items)))
    bounds = [round(k * len(items) / shards) for k in range(shards + 1)]
    return [items[a:b] for a, b in zip(bounds, bounds[1:])]


# ----------------------------------------------------------------------------------------------
# The five datasets.

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
    download = _Download(expected, expected.root / 'images')
    captions = iter(_captions(rng, n + 6))
    rows, members, pending_faults = [], [], []

    def add(image: _Image, usable: bool = True) -> str:
        filename, prompt = f'{_hex(rng, 16)}{image.ext}', f'{next(captions)} --ar 3:2 --v 5.2'
        rows.append(dict(filename=filename, prompt=prompt, width=image.width, height=image.height))
        if usable:
            expected.samples[f'images/{filename}'] = prompt
        return filename

    for i in range(n):
        image = _image(rng, i, _MIXED)
        members.append((add(image), image.data))
    if faults:
        filename = add(_image(rng, 0, _PNG), usable=False)
        pending_faults.append(('row-without-image', filename, 'prepare', 'no-image', f'images/{filename}'))
        for kind, reason, image in [
                ('corrupt-image', 'bad-image', _Image(not_an_image(), '.png', 512, 512)),
                ('small-image', 'too-small', _image(rng, 0, _JPEG, size=(64, 300))),
                ('extreme-aspect', 'bad-aspect', _image(rng, 0, _JPEG, size=(900, 88)))]:
            filename = add(image, usable=False)
            members.insert(rng.randrange(len(members) + 1), (filename, image.data))
            pending_faults.append((kind, filename, 'load', reason, f'images/{filename}'))
    for k, chunk in enumerate(_split(members, shards)):
        download.tar(f'raw/images/{k // 2:04d}/{k % 2:04d}/{k:06d}.tar', chunk, hostile and k == 0)
    if truncated_tar:
        kept, cut = _image(rng, 1, _MIXED), _image(rng, 2, _MIXED)
        kept_name, cut_name = add(kept), add(cut, usable=False)
        download.truncated_tar('raw/images/9999/0000/999999.tar',
                               [(kept_name, kept.data), (cut_name, cut.data)], f'images/{cut_name}')
    rng.shuffle(rows)
    schema = pa.schema([('filename', pa.string()), ('prompt', pa.string()), ('width', pa.int64()),
                        ('height', pa.int64())])
    table_of = {}
    for t, chunk in enumerate(_split(rows, 2), start=1):
        pq.write_table(pa.Table.from_pylist(chunk, schema=schema), expected.root / f'raw/table-{t}.parquet')
        table_of.update((row['filename'], f'raw/table-{t}.parquet') for row in chunk)
    for kind, filename, stage, reason, image in pending_faults:
        where = filename if filename in download.member_tars else f'{table_of[filename]}:{filename}'
        download.fault(kind, where, stage, reason, image)
    _hub_extras(expected.root / 'raw')
    return expected


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
    rng = random.Random(f'laion6m-{seed}')
    expected = Expected('laion6m', Path(root), image_folder='raw', data_path='data.json',
                        cap_folder='captions')
    download = _Download(expected, expected.root / 'raw')
    captions = iter(_captions(rng, 2 * (n + 6)))
    keys = (f'{k:09d}' for k in itertools.count(rng.randrange(10 ** 6)))
    samples, pending_faults = [], []  # samples: (key, image or None, caption json or None)

    def caption_json(i: int, key: str, usable: bool = True) -> bytes:
        recaption, other = next(captions), f'Stock photo of {next(captions)}'
        if usable:
            expected.samples[f'{key}.jpg'] = recaption
        if i % 5 == 4:
            return _json({'caption': recaption})
        if usable:
            expected.other_captions.setdefault('caption', {})[f'{key}.jpg'] = other
        return _json({'re_caption': recaption, 'caption': other})

    def raw_members(key: str, image: _Image) -> list[tuple[str, bytes]]:
        meta = {'url': f'https://images.example.com/{key}.jpg', 'key': key, 'status': 'success',
                'error_message': None, 'caption': f'alt text {key}', 'width': image.width,
                'height': image.height, 'original_width': image.width * 2,
                'original_height': image.height * 2, 'exif': None}
        return [(f'{key}.jpg', image.data), (f'{key}.json', _json(meta))]

    for i in range(n):
        key = next(keys)
        samples.append((key, _image(rng, i, _JPEG), caption_json(i, key)))
    if faults:
        for kind, member, reason, has_image, caption in [
                ('caption-without-image', 'captions', 'no-image', False, True),
                ('image-without-caption', 'raw', 'no-caption', True, None),
                ('malformed-caption-json', 'captions', 'unreadable json', True, b'{"re_caption": "a cat on')]:
            key = next(keys)
            if caption is True:
                caption = caption_json(0, key, usable=False)
            samples.append((key, _image(rng, 0, _JPEG) if has_image else None, caption))
            pending_faults.append((kind, key, member, reason))
        rng.shuffle(samples)
    tar_of = {}  # (folder, key) -> the tar holding that key's member
    for k, chunk in enumerate(_split(samples, shards)):
        download.tar(f'raw/{k:05d}.tar', [m for key, image, _ in chunk if image
                                          for m in raw_members(key, image)], hostile and k == 0)
        _write(expected.root / f'captions/{k:05d}.tar',
               _tar_bytes([(f'{key}.json', cap) for key, _, cap in chunk if cap is not None]))
        tar_of.update({(folder, key): f'{folder}/{k:05d}.tar' for key, _, _ in chunk
                       for folder in ('raw', 'captions')})
    for kind, key, folder, reason in pending_faults:
        member = f'{key}.jpg' if folder == 'raw' else f'{key}.json'
        expected.faults.append(Fault(kind, f'{tar_of[folder, key]}:{member}', 'prepare', reason,
                                     f'{key}.jpg'))
    if truncated_tar:
        kept_key, cut_key = next(keys), next(keys)
        kept, cut = _image(rng, 2, _JPEG), _image(rng, 3, _JPEG)
        download.truncated_tar('raw/99999.tar', raw_members(kept_key, kept) + raw_members(cut_key, cut)[::-1],
                               f'{cut_key}.jpg')
        _write(expected.root / 'captions/99999.tar', _tar_bytes(
            [(f'{kept_key}.json', caption_json(0, kept_key)),
             (f'{cut_key}.json', caption_json(0, cut_key, usable=False))]))
        samples += [(kept_key, kept, None), (cut_key, cut, None)]
    if with_index:
        index = [{'image': f'{key}.jpg', 'annotation': f'{key}.json'} for key, _, _ in samples]
        _write(expected.root / 'data.json', _json(index))
    _hub_extras(expected.root)
    return expected


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
    hub = layout == 'hub'
    rng = random.Random(f'dalle3-{seed}')
    expected = Expected('dalle3', Path(root), image_folder='data', data_path='dalle3.parquet',
                        cap_folder=None)
    download = _Download(expected, expected.root / 'data')
    captions = iter(_captions(rng, n + 6))
    pairs, pending_faults = [], []
    jpeg_exts = itertools.cycle(['.jpg', '.jpeg'])  # both are on the hub

    def pair(image: _Image, usable: bool = True, damage=None, image_name=None) -> list[tuple[str, bytes]]:
        """[(image name, image), (json name, metadata)]; ``damage`` rewrites the metadata bytes."""
        key, caption = _hex(rng, 16), next(captions)
        ext = image.ext if image.ext != '.jpg' else next(jpeg_exts)
        subject, style = caption.split(', ')[0], caption.split(', ')[-1]
        long_caption = (f'The image shows {subject}. It is rendered in the style of {style}, '
                        f'with careful attention to light and texture.')
        meta = {'image_name': image_name or f'{key}{ext}', 'md5_pil_hash': _hex(rng, 32),
                'md5_file_hash': hashlib.md5(image.data).hexdigest(), 'short_caption': caption,
                'long_caption': long_caption, 'resolution': f'{image.width}x{image.height}',
                'width': image.width, 'height': image.height,
                'url': f'https://cdn.example.com/dalle3/{key}{ext}'}
        if hub:
            meta.update(sha512_hash=_hex(rng, 128), source='dalle3', original_prompt=f'Make {subject}',
                        short_caption2=[f'{subject}, {style}'], long_caption2=[long_caption.upper()])
        if usable:
            expected.samples[f'{key}{ext}'] = caption
            expected.other_captions.setdefault('long_caption', {})[f'{key}{ext}'] = long_caption
            if hub:
                expected.other_captions.setdefault('short_caption2', {})[f'{key}{ext}'] = f'{subject}, {style}'
        return [(f'{key}{ext}', image.data), (f'{key}.json', damage(meta) if damage else _json(meta))]

    def without_size(meta: dict) -> bytes:
        return _json({k: v for k, v in meta.items() if k not in ('width', 'height', 'resolution')})

    def malformed(meta: dict) -> bytes:
        return _json(meta)[:-20]

    kinds = [kind for pair_ in zip(_PNG, _JPEG) for kind in pair_] if hub else _PNG
    for i in range(n):
        pairs.append(pair(_image(rng, i, kinds)))
    if faults:
        for kind, damage, reason in [('json-without-width', without_size, 'no width'),
                                     ('malformed-json', malformed, 'unreadable json')]:
            members = pair(_image(rng, 0, _PNG), usable=False, damage=damage)
            pending_faults.append((kind, members[1][0], 'prepare', reason, members[0][0]))
            pairs.insert(rng.randrange(len(pairs) + 1), members)
        if hub:
            members = pair(_image(rng, 0, _PNG), usable=False)
            pending_faults.append(('json-without-image', members[1][0], 'prepare', 'no-image', members[0][0]))
            pairs.insert(rng.randrange(len(pairs) + 1), members[1:])  # its image is in no tar
            renamed = pair(_image(rng, 1, _JPEG), image_name='not-this-name.png')
            pairs.insert(rng.randrange(len(pairs) + 1), renamed)
    folder = 'data/' if hub else ''
    for k, chunk in enumerate(_split(pairs, shards)):
        download.tar(f'{folder}data-{k:06d}.tar', [m for members in chunk for m in members], hostile and k == 0)
    if truncated_tar:
        kept, cut = pair(_image(rng, 1, _PNG)), pair(_image(rng, 2, _PNG), usable=False)
        download.truncated_tar(f'{folder}data-999999.tar', kept + cut[::-1], cut[0][0])
    for fault in pending_faults:
        download.fault(*fault)
    if hub:
        _hub_extras(expected.root, previews=2)
    return expected


def _hub_extras(root: Path, previews: int = 0) -> None:
    """What ``huggingface-cli download --local-dir`` leaves beside the data: the card, its
    bookkeeping in ``.cache/huggingface/``, and for some repositories preview images."""
    _write(root / 'README.md', b'---\nlicense: cc0-1.0\n---\n# A dataset card\n')
    _write(root / '.cache/huggingface/download/README.md.metadata', b'0123abcd\netag\n1700000000.0\n')
    _write(root / '.cache/huggingface/.gitignore', b'*\n')
    if previews:
        _write(root / 'CITATION.cff', b'cff-version: 1.2.0\n')
        _write(root / 'hashing_functions.py', b'import hashlib\n')
        for i in range(previews):
            _write(root / f'preview_{i}.jpg', encode_image(128, 96, fmt='JPEG', mode='RGB', seed=i))


def make_redcaps5m(root, n: int = 12, seed: int = 0, faults: bool = True, hostile: bool = False,
                   truncated_tar: bool = False, shards: int = 3) -> Expected:
    """``raw/<k>.tar`` of ``<subreddit>/<id>.<ext>`` + ``<subreddit>/<id>.json`` pairs (json:
    ``re_caption`` = the expected caption, ``caption`` = the Reddit title, in ``other_captions``,
    subreddit, id, url), and ``redcaps5m_data.json`` (``{"image", "annotation"}`` relative to
    ``raw/``).

    Faults: an index entry whose image is missing (its caption json is there: 'prepare', 'no-image').
    """
    rng = random.Random(f'redcaps5m-{seed}')
    expected = Expected('redcaps5m', Path(root), image_folder='raw', data_path='redcaps5m_data.json',
                        cap_folder='raw')
    download = _Download(expected, expected.root / 'raw')
    captions = iter(_captions(rng, 2 * (n + 3)))
    subreddits = ['itookapicture', 'earthporn', 'foodporn', 'cats', 'architecture']
    samples, pending_faults = [], []  # samples: (image path, annotation path, members)

    def sample(image: _Image | None, usable: bool = True) -> tuple[str, str, list[tuple[str, bytes]]]:
        subreddit, ident = rng.choice(subreddits), _hex(rng, 6)
        image_path = f'{subreddit}/{ident}{image.ext if image else ".jpg"}'
        recaption, title = next(captions), f'[OC] {next(captions)}'
        meta = {'re_caption': recaption, 'caption': title, 'subreddit': subreddit, 'id': ident,
                'url': f'https://i.redd.it/{ident}.jpg'}
        members = [(f'{subreddit}/{ident}.json', _json(meta))]
        if image is not None:
            members.insert(0, (image_path, image.data))
        if usable:
            expected.samples[image_path] = recaption
            expected.other_captions.setdefault('caption', {})[image_path] = title
        return image_path, f'{subreddit}/{ident}.json', members

    for i in range(n):
        samples.append(sample(_image(rng, i, _MOSTLY_JPEG)))
    if faults:
        missing = sample(None, usable=False)
        pending_faults.append(('entry-without-image', 'redcaps5m_data.json', 'prepare', 'no-image',
                               missing[0]))
        samples.insert(rng.randrange(len(samples) + 1), missing)
    for k, chunk in enumerate(_split(samples, shards)):
        download.tar(f'raw/{k:05d}.tar', [m for _, _, members in chunk for m in members],
                     hostile and k == 0)
    if truncated_tar:
        kept, cut = sample(_image(rng, 0, _JPEG)), sample(_image(rng, 1, _JPEG), usable=False)
        download.truncated_tar('raw/99999.tar', kept[2] + cut[2][::-1], cut[0])
        samples += [kept, cut]
    for fault in pending_faults:
        download.fault(*fault)
    index = [{'image': image, 'annotation': annotation} for image, annotation, _ in samples]
    _write(expected.root / 'redcaps5m_data.json', _json(index))
    _hub_extras(expected.root)
    return expected


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
    download = _Download(expected, expected.root / 'raw' / BLIP3O60K_TARS[0])
    captions = iter(_captions(rng, n + 4))
    # (id, image, .txt bytes or None, expected caption, or (kind, reason) of a fault, or None: cut)
    samples = []

    def sample(image: _Image) -> tuple:
        text = next(captions)
        padded = f'{text}\n' if len(samples) % 3 else f'  {text} \n\n'
        return _hex(rng, 12), image, padded.encode(), text

    for i in range(n):
        samples.append(sample(_image(rng, i, _MIXED)))
    if faults:
        for kind, reason, caption in [('image-without-caption', 'no-caption', None),
                                      ('caption-not-utf8', 'unreadable caption', b'\xff\xfe caf\xe9 \x80\n')]:
            samples.insert(rng.randrange(len(samples) + 1),
                           (_hex(rng, 12), _image(rng, 0, _JPEG), caption, (kind, reason)))

    def tar(stem: str, chunk: list, hostile: bool = False, cut: bool = False) -> list[dict]:
        """Write ``raw/<stem>.tar`` of ``chunk``; return its data.json entries."""
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

    index = []
    for stem, chunk in zip(BLIP3O60K_TARS, _split(samples, min(shards, len(BLIP3O60K_TARS) - 1))):
        index += tar(stem, chunk, hostile and stem == BLIP3O60K_TARS[0])
    if truncated_tar:
        kept, cut = sample(_image(rng, 1, _MIXED)), sample(_image(rng, 2, _MIXED))
        index += tar(BLIP3O60K_TARS[-1], [kept, cut[:3] + (None,)], cut=True)
    if with_index:
        _write(expected.root / 'data.json', _json(index))
    _hub_extras(expected.root / 'raw')  # the guide downloads the repository into raw/
    return expected


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
    captions = iter(_captions(rng, 2 * (n + 3)))
    rows = []  # (row of the parquet, fault kind or None)
    for i in range(n):
        image = _image(rng, i, _MOSTLY_JPEG)
        path = f'/{name}/{_hex(rng, 10)}{image.ext}'
        content_type = {'.jpg': 'image/jpeg', '.png': 'image/png', '.webp': 'image/webp'}[image.ext]
        rows.append(({url_col: server.add(path, Response(image.data, content_type=content_type))}, None))
    if faults:
        for kind, response in [('http-404', None), ('not-an-image', Response(b'<html>gone</html>', content_type='text/html')),
                               ('timeout', Response(b'late', delay=3.0))]:
            path = f'/{name}/{_hex(rng, 10)}.jpg'
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
    for part, chunk in enumerate(_split(rows, parquets)):
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
    _hub_extras(expected.root / 'parquets')  # the guides download the repository into parquets/
    return expected


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
    download = _Download(expected, expected.root / 'raw' / '00000')
    captions = iter(_captions(rng, 3 * (n + 6)))
    keys = (f'{k:08d}' for k in itertools.count(rng.randrange(10 ** 6)))
    samples = []  # (key, image or None, caption json bytes or None, fault (kind, reason) or None)

    def caption_json(key: str, usable: bool = True) -> bytes:
        texts = {name: next(captions) for name in MEGALITH_CAPTION_KEYS}
        if usable:
            expected.samples[key] = texts['caption']  # completed with the shard below
        return _json(texts)

    for i in range(n):
        key = next(keys)
        samples.append((key, _image(rng, i, _MOSTLY_JPEG), caption_json(key), None))
    if faults:
        for kind, reason, image, caption in [('image-without-caption', 'no-caption', True, None),
                                             ('caption-without-image', 'no-image', False, True),
                                             ('malformed-caption-json', 'unreadable json', True, b'{"caption": "a')]:
            key = next(keys)
            samples.append((key, _image(rng, 0, _JPEG) if image else None,
                            caption_json(key, usable=False) if caption is True else caption, (kind, reason)))
        rng.shuffle(samples)
    index = []
    for k, chunk in enumerate(_split(samples, shards)):
        stem = f'{k:05d}'
        download.tar(f'raw/{stem}.tar', [(f'{key}.jpg', image.data) for key, image, _, _ in chunk if image],
                     hostile and k == 0)
        _write(expected.root / f'captions/{stem}.tar',
               _tar_bytes([(f'{stem}/{key}.json', caption) for key, _, caption, _ in chunk if caption is not None]))
        for key, image, caption, fault in chunk:
            relative = f'{stem}/{key}.jpg'
            if key in expected.samples:
                expected.samples[relative] = expected.samples.pop(key)
            if fault:
                where = f'raw/{stem}.tar:{key}.jpg' if image else f'captions/{stem}.tar:{stem}/{key}.json'
                expected.faults.append(Fault(fault[0], where, 'prepare', fault[1], relative))
            index.append({'image': relative, 'annotation': f'{stem}/{key}.json'})
    if truncated_tar:
        stem = '99999'
        kept_key, cut_key = next(keys), next(keys)
        kept, cut = _image(rng, 1, _JPEG), _image(rng, 2, _JPEG)
        download.truncated_tar(f'raw/{stem}.tar', [(f'{kept_key}.jpg', kept.data), (f'{cut_key}.jpg', cut.data)],
                               f'{stem}/{cut_key}.jpg')
        _write(expected.root / f'captions/{stem}.tar', _tar_bytes(
            [(f'{stem}/{kept_key}.json', caption_json(kept_key)), (f'{stem}/{cut_key}.json', caption_json(cut_key, False))]))
        expected.samples[f'{stem}/{kept_key}.jpg'] = expected.samples.pop(kept_key)
        index += [{'image': f'{stem}/{key}.jpg', 'annotation': f'{stem}/{key}.json'} for key in (kept_key, cut_key)]
    if with_index:
        _write(expected.root / 'megalith10m_all.json', _json(index))
    _hub_extras(expected.root)
    return expected


def make_caption_layout(workdir, data_path: str, image_folder: str, cap_source: str, cap_folder: str | None = None,
                        n: int = 6, seed: int = 0) -> dict[str, str]:
    """A prepared dataset in any upstream config's layout, for configs of datasets without a tool
    here (VGT's megalith-10m, text-to-image-2M, ...): ``n`` images under ``image_folder`` and the
    index ``data_path`` (paths relative to ``workdir``). With ``cap_folder`` the records are
    ``{"image", "annotation"}`` and each caption is the ``cap_source`` key of a json file there;
    without, the records hold the caption inline under ``cap_source``. Returns image -> caption."""
    rng = random.Random(f'{data_path}-{seed}')
    workdir = Path(workdir)
    samples, records = {}, []
    for i, caption in enumerate(_captions(rng, n)):
        image = _image(rng, i, _MOSTLY_JPEG)
        name = f'{_hex(rng, 8)}{image.ext}'
        _write(workdir / image_folder / name, image.data)
        samples[name] = caption
        if cap_folder is None:
            records.append({'image': name, cap_source: caption})
        else:
            annotation = f'{Path(name).stem}.json'
            _write(workdir / cap_folder / annotation, _json({cap_source: caption, 'other': f'not {caption}'}))
            records.append({'image': name, 'annotation': annotation})
    _write(workdir / data_path, _json(records))
    return samples


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
