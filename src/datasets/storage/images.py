"""Opening an image file's bytes, trusting nothing in them: the one place that calls ``Image.open``.

:func:`open_image` reads the header only, among the raster formats these datasets hold, and refuses
before any decode what would cost a worker without bound: more pixels than a limit, a JPEG of
more scans than its size allows (:func:`jpeg_scans` counts them without decoding), a PNG of more
chunks or a GIF of more extension blocks than its size allows (:func:`png_chunks`,
:func:`gif_blocks`), a TIFF whose tiles or strips cost more than its picture. Every refusal is a
``SampleError`` naming the file; no Pillow traceback escapes. :func:`oriented_size` is the picture's
upright size from the same header (its EXIF orientation), for the size index and the crop.
Decoding, cropping and resizing are the sample's (``src.datasets.sample.image_io``).
"""
from __future__ import annotations

import io
import struct
import warnings
import zlib

from PIL import Image

from src.datasets.errors import SampleError
from src.datasets.storage.redact import byte_kind

# A header claiming more pixels than this is refused, never decoded: 8192 x 8192 RGB is 200 MB per
# worker already. Below Pillow's own default limit, so Pillow's bomb warning stays quiet.
DEFAULT_MAX_PIXELS = 8192 * 8192

# A progressive JPEG is decoded scan by scan, each a pass over the picture: encoders write up to
# about 10 (libjpeg's and mozjpeg's scripts; 190 for one scan per coefficient, which no encoder's
# default does), while a hostile file repeats scans by the thousand, a pass of the decoder each. Up to
# 100 are read up to 4 megapixels, fewer for a larger picture, where each costs more (32 from 13 on).
MAX_JPEG_SCANS = 100
MIN_JPEG_SCANS = 32
_SCAN_PIXELS = MAX_JPEG_SCANS * 2048 * 2048  # scans x pixels a picture may cost
_SOS, _STANDALONE = 0xDA, frozenset((0x01, *range(0xD0, 0xD9)))
_MAX_HEADER_STEPS = 4096  # markers and fill bytes before the first scan stepped over, at most

# Pillow reads a PNG's chunks and a GIF's extension blocks one at a time in Python: a file of
# millions of empty ones costs seconds a megabyte where its pixels cost milliseconds. Encoders write
# a handful besides the image data, which comes in chunks of kilobytes (a GIF's in its decoder);
# more than that many, one a kilobyte, is refused.
_MIN_BLOCKS = 1024
_BLOCK_BYTES = 1024
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'

# The raster formats these datasets hold; restricting the plugins Pillow tries keeps untrusted bytes
# away from ones that shell out (EPS runs Ghostscript) or parse exotic containers.
SUPPORTED_FORMATS = ('JPEG', 'PNG', 'WEBP', 'GIF', 'BMP', 'TIFF')
Image.init()  # Image.open(formats=...) looks only among registered plugins; register them all (JPEG covers MPO)

# What a broken or hostile file makes Pillow's plugins raise while reading a header or decoding.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error,
                 zlib.error, Image.DecompressionBombError)

_TIFF_TILE_WIDTH, _TIFF_TILE_LENGTH = 322, 323
_EXIF_ORIENTATION = 0x0112
_TURNED = frozenset(range(2, 9))  # the EXIF orientations other than upright (1): flips, turns, diagonals

# The file name travels with the opened image, so that decode errors can name it.
_NAME_KEY = 'sample_name'


def image_name(img: Image.Image) -> str:
    """The name ``img`` was opened under, for a message about it."""
    return img.info.get(_NAME_KEY) or getattr(img, 'filename', '') or '<image>'


def open_image(data: bytes, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The image in ``data``, with only its header read.

    Raises ``SampleError('bad-image')`` for empty, non-image or unreadable bytes and
    ``SampleError('too-large')`` when the header claims more than ``max_pixels`` pixels.
    """
    if not data:
        raise SampleError('bad-image', f'{name}: empty file (0 bytes)')
    limit = max_blocks(len(data))
    for signature, (kind, blocks, count) in _COUNTED_BLOCKS.items():
        if data.startswith(signature) and count(data, limit) > limit:
            raise SampleError('bad-image', f'{name}: a {kind} of more than {limit} {blocks} in {len(data)} bytes '
                                           '(Pillow reads each on its own, before the pixels): refused, not opened')
    try:
        with warnings.catch_warnings():
            # The size is checked below against max_pixels, whatever Pillow's global limit says.
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise SampleError('too-large', f'{name}: refused by Pillow as a decompression bomb: {exc}') from None
    except Image.UnidentifiedImageError:
        raise SampleError('bad-image', f'{name}: not an image in a supported format '
                                       f'({", ".join(SUPPORTED_FORMATS)}); it holds {byte_kind(data)}') from None
    except DECODE_ERRORS as exc:
        raise SampleError('bad-image', f'{name}: unreadable image header: {exc}') from None
    width, height = img.size
    if width * height > max_pixels:
        raise SampleError('too-large', f'{name}: {width}x{height} = {width * height} pixels is more than '
                                       f'max_pixels={max_pixels} (possible decompression bomb)')
    if img.format == 'TIFF':
        _check_tiff_layout(img, name, max_pixels)
    if img.format in ('JPEG', 'MPO'):
        scans, limit = jpeg_scans(data), max_jpeg_scans(width * height)
        if scans > limit:
            raise ScanBomb('bad-image', f'{name}: a JPEG of {scans} scans, more than the {limit} a {width}x{height} '
                                           'picture may have (each scan is a pass of the decoder): refused, not decoded')
    img.info[_NAME_KEY] = name
    return img


def max_blocks(size: int) -> int:
    """The most PNG chunks or GIF extension blocks a file of ``size`` bytes may have (see ``_MIN_BLOCKS``)."""
    return _MIN_BLOCKS + size // _BLOCK_BYTES


def png_chunks(data: bytes, limit: int) -> int:
    """The chunks of the PNG in ``data`` up to its IEND, stepped over by their lengths; counting stops
    past ``limit`` (so it costs at most that many steps)."""
    at, count = 8, 0  # after the signature
    while at + 8 <= len(data) and count <= limit and data[at + 4:at + 8] != b'IEND':
        at += 12 + int.from_bytes(data[at:at + 4], 'big')  # length, type, data, CRC
        count += 1
    return count


def gif_blocks(data: bytes, limit: int) -> int:
    """The extension blocks and their sub-blocks of the GIF in ``data`` before its first picture
    (whose data its decoder reads), stepped over by their lengths; counting stops past ``limit``."""
    at, count = 13 + (3 << ((data[10] & 7) + 1) if len(data) > 10 and data[10] & 0x80 else 0), 0
    while at + 1 < len(data) and data[at] == 0x21 and count <= limit:  # an extension: its label, its sub-blocks
        at += 2
        while at < len(data) and data[at] and count <= limit:
            at += 1 + data[at]
            count += 1
        at += 1
        count += 1
    return count


_COUNTED_BLOCKS = {_PNG_SIGNATURE: ('PNG', 'chunks', png_chunks), b'GIF8': ('GIF', 'extension blocks', gif_blocks)}


def _check_tiff_layout(img: Image.Image, name: str, max_pixels: int) -> None:
    """Refuse a TIFF whose layout costs its decoder more than its picture: a tile of more than
    ``max_pixels`` (libtiff allocates a whole tile, whatever the picture's size), or strips or tiles
    covering it more than once a band (each is decoded again, the list as long as the file allows)."""
    tile = img.tag_v2.get(_TIFF_TILE_WIDTH), img.tag_v2.get(_TIFF_TILE_LENGTH)
    if all(isinstance(side, int) for side in tile) and tile[0] * tile[1] > max_pixels:
        raise SampleError('too-large', f'{name}: a TIFF tile of {tile[0]}x{tile[1]} pixels is more than '
                                       f'max_pixels={max_pixels}: refused, not decoded')
    width, height = img.size
    covered = sum((x1 - x0) * (y1 - y0) for _, (x0, y0, x1, y1), *_ in (t for t in img.tile if t[1]))
    if covered > width * height * len(img.getbands()):
        raise SampleError('bad-image', f'{name}: the {len(img.tile)} strips or tiles of this TIFF cover its '
                                       f'{width}x{height} picture {covered / (width * height):.0f} times over '
                                       '(each is decoded again): refused, not decoded')


class ScanBomb(SampleError):
    """The scan refusal of :func:`open_image` (counted as 'bad-image'): a JPEG whose scans would take
    its decoder far longer than its size says. Told apart so that a download refuses it too."""


def max_jpeg_scans(pixels: int) -> int:
    """The most scans a JPEG of ``pixels`` pixels may have (see ``MAX_JPEG_SCANS``)."""
    return max(MIN_JPEG_SCANS, min(MAX_JPEG_SCANS, _SCAN_PIXELS // max(pixels, 1)))


def jpeg_scans(data: bytes) -> int:
    """The scans (SOS markers) of the JPEG in ``data``, counted without decoding: the segments
    before the first scan are stepped over by their lengths (an EXIF thumbnail is not counted);
    after it, every SOS marker counts (in coded data a 0xFF byte is always followed by 0x00 or a
    marker, so none is mistaken; an MPO's later pictures count too). Where the header is no
    sequence of segments (or an endless one), every SOS marker in the file counts."""
    at = 2  # after SOI
    for _ in range(_MAX_HEADER_STEPS):
        if at + 4 > len(data) or data[at] != 0xFF:
            break  # not a marker where one belongs: Pillow's decoder says what is wrong
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
        elif marker == _SOS:
            return 1 + data.count(b'\xff\xda', at + 2)
        elif marker in _STANDALONE:
            at += 2
        else:
            at += 2 + int.from_bytes(data[at + 2:at + 4], 'big')
    return data.count(b'\xff\xda')


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 when absent) as far as the header tells, without decoding.

    A PNG's eXIf chunk after the pixel data is only seen by decoding; such a PNG counts as upright.
    """
    if img.format == 'PNG' and 'exif' not in img.info:
        return 1
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except DECODE_ERRORS:
        return 1  # an unreadable EXIF block leaves the pixels as stored, as viewers do
    return orientation if orientation in _TURNED else 1


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """``(width, height)`` once the EXIF orientation is applied."""
    return upright_size(img.size, exif_orientation(img))


def upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """The stored ``size`` (width, height) as the picture stands once turned by ``orientation``."""
    width, height = size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
