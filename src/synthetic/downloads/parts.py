"""The building blocks every miniature download is made of: what a preparation must give (:class:`Expected`,
its :class:`Fault` list), captions, encoded pictures of the kinds a dataset holds, and tar files written as
the hub serves them, hostile members and cut ones included."""
from __future__ import annotations

import io
import itertools
import json
import os
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from src.synthetic.images import EXTENSIONS, encode_image

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
MIXED = [('JPEG', 'RGB', None), ('PNG', 'RGBA', None), ('WEBP', 'RGB', None),
          ('JPEG', 'CMYK', None), ('PNG', 'P', None), ('JPEG', 'L', None), ('WEBP', 'RGBA', None),
          ('PNG', 'P-transparent', None), ('JPEG', 'RGB', 6), ('PNG', 'L', None)]
JPEG_ONLY = [('JPEG', 'RGB', None), ('JPEG', 'L', None), ('JPEG', 'RGB', 6), ('JPEG', 'CMYK', None)]
PNG_ONLY = [('PNG', 'RGB', None), ('PNG', 'RGBA', None), ('PNG', 'L', None), ('PNG', 'P', None),
        ('PNG', 'P-transparent', None)]
MOSTLY_JPEG = JPEG_ONLY + [('PNG', 'RGBA', None), ('WEBP', 'RGB', None)]

_ASPECTS = [0.25, 0.5, 0.75, 1.0, 1.0, 4 / 3, 1.5, 2.0, 3.0, 6.0]


def draw_captions(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct captions: subject, setting and style drawn without repetition (past the
    combinations, the same again numbered: a bench's thousands of samples)."""
    combos = list(itertools.product(_SUBJECTS, _SETTINGS, _STYLES))
    rng.shuffle(combos)
    drawn = [f'{subject} {setting}, {style}' for subject, setting, style in combos[:count]]
    captions, number = list(drawn), 2
    while len(captions) < count:
        captions += [f'{caption} ({number})' for caption in drawn[:count - len(captions)]]
        number += 1
    return captions


@dataclass
class Picture:
    data: bytes
    ext: str
    width: int   # as displayed, i.e. after the EXIF orientation
    height: int


def picture(rng: random.Random, index: int, kinds: list, size: tuple[int, int] | None = None) -> Picture:
    """An encoded picture of kind ``kinds[index % len(kinds)]``, usable (> 80 px, aspect in (0.1, 10))
    unless ``size`` says otherwise."""
    fmt, mode, orientation = kinds[index % len(kinds)]
    if size is None:
        aspect, long_side = rng.choice(_ASPECTS), rng.randint(160, 640)
        w, h = (long_side, round(long_side / aspect)) if aspect >= 1 else (round(long_side * aspect), long_side)
        size = (max(w, 96), max(h, 96))
    data = encode_image(*size, fmt=fmt, mode=mode, seed=rng.randrange(2 ** 31),
                        exif_orientation=orientation)
    return Picture(data, EXTENSIONS[fmt], *size)


def hex_id(rng: random.Random, digits: int) -> str:
    return f'{rng.getrandbits(4 * digits):0{digits}x}'


def json_bytes(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def _file_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 1_700_000_000, 0o644
    return info


def tar_bytes(members: list[tuple[str, bytes]], hostile: bool = False) -> bytes:
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


def write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


class Download:
    """Writes the tars of one download and records the Expected they imply."""

    def __init__(self, expected: Expected, first_extract_dir: Path):
        self.expected = expected
        self.first_extract_dir = first_extract_dir  # where the tool extracts the first tar
        self.member_tars: dict[str, str] = {}

    def tar(self, rel: str, members: list[tuple[str, bytes]], hostile: bool = False) -> None:
        write_file(self.expected.root / rel, tar_bytes(members, hostile))
        self.member_tars.update((name, rel) for name, _ in members)
        if hostile:
            self.expected.must_not_exist += [
                Path(os.path.normpath(self.first_extract_dir / HOSTILE_ESCAPE)), Path(HOSTILE_ABSOLUTE),
                self.first_extract_dir / HOSTILE_LINK]
            self.expected.faults += [Fault('unsafe-member', f'{rel}:{name}', 'prepare', 'unsafe member')
                                     for name in (HOSTILE_ESCAPE, HOSTILE_ABSOLUTE, HOSTILE_LINK)]

    def truncated_tar(self, rel: str, members: list[tuple[str, bytes]], cut_image: str) -> None:
        """Write ``members`` as a tar cut halfway through the last member's data."""
        data = tar_bytes(members)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            last = tar.getmembers()[-1]
        write_file(self.expected.root / rel, data[:last.offset_data + last.size // 2])
        self.expected.faults.append(Fault('truncated-member', f'{rel}:{last.name}', 'prepare',
                                          'truncated', cut_image))

    def fault(self, kind: str, where: str, stage: str, reason: str, image: str | None) -> None:
        """Record a fault; ``where`` is a member name (of a tar written already) or a file."""
        path = f'{self.member_tars[where]}:{where}' if where in self.member_tars else where
        self.expected.faults.append(Fault(kind, path, stage, reason, image))


def split_chunks(items: list, shards: int) -> list[list]:
    """``items`` in ``shards`` contiguous, nearly equal, non-empty chunks."""
    shards = max(1, min(shards, len(items)))
    bounds = [round(k * len(items) / shards) for k in range(shards + 1)]
    return [items[a:b] for a, b in zip(bounds, bounds[1:])]


def hub_extras(root: Path, previews: int = 0) -> None:
    """What ``huggingface-cli download --local-dir`` leaves beside the data: the card, its
    bookkeeping in ``.cache/huggingface/``, and for some repositories preview images."""
    write_file(root / 'README.md', b'---\nlicense: cc0-1.0\n---\n# A dataset card\n')
    write_file(root / '.cache/huggingface/download/README.md.metadata', b'0123abcd\netag\n1700000000.0\n')
    write_file(root / '.cache/huggingface/.gitignore', b'*\n')
    if previews:
        write_file(root / 'CITATION.cff', b'cff-version: 1.2.0\n')
        write_file(root / 'hashing_functions.py', b'import hashlib\n')
        for i in range(previews):
            write_file(root / f'preview_{i}.jpg', encode_image(128, 96, fmt='JPEG', mode='RGB', seed=i))
