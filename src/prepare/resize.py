"""``--resize-to``: extracted images rewritten smaller, for training at one resolution.

A member's name says nothing sure about its bytes (a CMYK JPEG named ``.png``, a 16-bit PNG named
``.jpg`` are both in real downloads), so the picture is opened by the dataset's own function
(``src.datasets.storage.images.open_image``: the formats the project reads and no other, a bound on
its pixels) and written back in the format it really is, under its own name. Modes that format
cannot hold, or that Pillow's resampler does not take, are converted first as the dataset converts
them (``src.datasets.sample.image_io.to_rgb``: 16-bit values scaled, transparency on white), so the
dataset sees the same picture, only smaller.
"""
from __future__ import annotations

import io
import os

from src.datasets.errors import SampleError
from src.datasets.storage.files import read_file
from src.datasets.sample.image_io import to_rgb
from src.datasets.storage.images import open_image

NAMED = ('.jpg', '.jpeg', '.png', '.webp')  # the members looked at: the images these datasets hold
WRITABLE = {'JPEG': dict(quality=95), 'PNG': {}, 'WEBP': dict(quality=95)}
RESAMPLED_MODES = ('RGB', 'RGBA', 'L', 'LA', 'CMYK')  # modes Pillow's LANCZOS takes as they are
JPEG_MODES = ('RGB', 'L', 'CMYK')


class NotResized(Exception):
    """The member is kept as extracted; ``reason`` says why it could not be made smaller."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def shrink_image(path: str, short_side: int) -> bool:
    """Rewrite the image at ``path`` with its short side ``short_side`` (aspect kept, EXIF orientation
    applied first, so the picture and its crops are those of the original) when it is larger.
    Returns whether it was rewritten; files that are no image by name, and images already small
    enough, are left byte for byte. Raises :class:`NotResized` for an image that cannot be read or
    written back (the file is then left as it was, for the dataset to judge), and ``OSError`` when
    the disk refuses the write."""
    from PIL import Image, ImageOps

    if os.path.splitext(path)[1].lower() not in NAMED:
        return False
    try:
        img = open_image(read_file(path), path)
    except SampleError as err:
        raise NotResized(err.reason) from None
    if img.format not in WRITABLE:
        raise NotResized(f'{img.format} data')  # a GIF or TIFF under an image name: kept as it is
    try:
        upright = ImageOps.exif_transpose(img)
        if min(upright.size) <= short_side:
            return False
        if upright.mode not in (JPEG_MODES if img.format == 'JPEG' else RESAMPLED_MODES):
            upright = to_rgb(upright)
        scale = short_side / min(upright.size)
        size = (max(short_side, round(upright.width * scale)), max(short_side, round(upright.height * scale)))
        small = upright.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        encoded = io.BytesIO()
        small.save(encoded, img.format, **WRITABLE[img.format])
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        raise NotResized(f'cannot decode or encode {img.format}: {type(err).__name__}') from None
    with open(path, 'wb') as out:  # in the staging folder: the tar is redone if this is cut short
        out.write(encoded.getbuffer())
    return True
