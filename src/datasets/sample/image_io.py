"""Image bytes to the normalised pixel tensor of the target's shape a text-to-image sample holds.

Small steps, each testable alone, and ``load_pixels`` composing them the way the dataset does:
open (header only: ``src.datasets.storage.images``) -> check size -> draw the crop box of the
target's shape -> decode + crop + resize -> float planes (``src.datasets.sample.planes``). A square
crop is the target (S, S) of that one path; an aspect-ratio bucket (``src.datasets.sample.buckets``)
is any other (height, width).
Every failure is a ``SampleError`` whose message names the file; no Pillow traceback escapes.

Decoding only what the crop needs, with the fastest decoder that gives the same pixels
(``bench/bench_decoders.py`` surveys them per format; bench/RESULTS.md, "Decode and decoders"):
- JPEG: Pillow, with ``draft`` making libjpeg-turbo decode at the smallest DCT scale (1/8, 1/4,
  1/2) whose copy of the crop still has at least ``image_size`` pixels a side, so it resamples from
  less and never upsamples; Pillow exposes no region decode, so the whole picture is decoded.
  simplejpeg and torchvision.io are no faster; PyTurboJPEG gives the same pixels a little faster
  but loads the system's libjpeg-turbo through ctypes (its 2.x needs libjpeg-turbo 3, newer than
  Debian 12's), which no pip install provides.
- PNG: 8-bit RGB through pyspng (libspng), faster than Pillow with identical pixels; other
  modes through Pillow, which neither scales nor crops a PNG decode.
- WebP and the rest: Pillow (torchvision.io decodes WebP faster, but none of the five
  datasets is WebP, and torchvision is not a dependency of the core).
- Only the crop is resized, with Pillow's bicubic filter as torch implements it (see ``_resize``),
  and not at all when the decoded crop already has the output size; the EXIF rotation/flip is
  applied to the small result instead of the full picture, and the pixel pipeline keeps that
  result a tensor. Pillow's decoded pixels reach torch through its Arrow export, without a copy.
  ``bench/bench_sample.py`` shows what each step costs against the decode alone.
- Not done: stopping the JPEG decode below the crop, or skipping PNG rows after it, would need
  Pillow's private tile state; the saving (at most the discarded strip) does not justify that.
"""
from __future__ import annotations

import io
import random
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyspng
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from src.datasets.errors import SampleError
from src.datasets.sample.planes import float_planes
from src.datasets.storage.images import (DECODE_ERRORS, DEFAULT_MAX_PIXELS, exif_orientation, image_name,
                                         open_image, upright_size)

REDUCING_GAP = 2.0  # the bicubic pass sees at least this many source pixels per output pixel

# EXIF orientation -> what turns a [C, H, W] tensor of the stored pixels upright, as
# ImageOps.exif_transpose does (6: 90 degrees clockwise, 8: counter-clockwise, 5/7: the diagonals).
_UPRIGHT = {2: lambda t: t.flip(-1), 3: lambda t: t.flip(-2, -1), 4: lambda t: t.flip(-2),
            5: lambda t: t.transpose(-2, -1), 6: lambda t: t.rot90(-1, (-2, -1)),
            7: lambda t: t.transpose(-2, -1).flip(-2, -1), 8: lambda t: t.rot90(1, (-2, -1))}


def decode_upright_rgb(img: Image.Image) -> Image.Image:
    """``img`` (from ``open_image``) decoded whole, turned upright by its EXIF orientation (the tag is
    then removed, so nothing turns it twice), in RGB: the picture as upstream's hooks hand it to a
    subclass. ``SampleError('bad-image')`` when the data is damaged."""
    try:
        img.load()
        return to_rgb(ImageOps.exif_transpose(img))
    except DECODE_ERRORS as exc:
        raise SampleError('bad-image', f'{image_name(img)}: cannot decode {img.format or "image"} data: {exc}') from None


def check_size(size: tuple[int, int], name: str, min_image_size: int = 80,
               max_aspect: float = 10.0) -> None:
    """Refuse pictures too small or too elongated for training (upstream OpenUni's rule)."""
    width, height = size
    if not (width > min_image_size and height > min_image_size):
        raise SampleError('too-small', f'{name}: {width}x{height} has a side of at most '
                                       f'min_image_size={min_image_size}')
    if not (1 / max_aspect < width / height < max_aspect):
        raise SampleError('bad-aspect', f'{name}: {width}x{height} has aspect ratio {width / height:.3g}, '
                                        f'outside (1/{max_aspect:g}, {max_aspect:g})')


def crop_box(size: tuple[int, int], target: tuple[int, int], rng: random.Random,
             mode: str = 'random') -> tuple[int, int, int, int]:
    """The largest box of ``target``'s shape (height, width) inside a picture of ``size`` (width,
    height), as ``(x0, y0, x1, y1)``: what covering the target and cropping the rest keeps.

    ``mode`` 'random' places it by two draws from ``rng`` (always two, so the sequence does not
    depend on the picture's shape); 'center' centres it and draws nothing.
    """
    width, height = size
    target_h, target_w = target
    if width * target_h >= height * target_w:  # wider than the target: the whole height
        box_w, box_h = min(width, max(1, round(height * target_w / target_h))), height
    else:
        box_w, box_h = width, min(height, max(1, round(width * target_h / target_w)))
    if mode == 'center':
        x0, y0 = (width - box_w) // 2, (height - box_h) // 2
    else:
        x0 = rng.randint(0, width - box_w)
        y0 = rng.randint(0, height - box_h)
    return x0, y0, x0 + box_w, y0 + box_h


def random_square_box(size: tuple[int, int], rng: random.Random) -> tuple[int, int, int, int]:
    """A random square of side ``min(w, h)`` inside ``size``, as ``(x0, y0, x1, y1)`` (two draws)."""
    return crop_box(size, (1, 1), rng)


def _white_background(img: Image.Image) -> Image.Image:
    rgba = img.convert('RGBA')
    out = Image.new('RGB', rgba.size, (255, 255, 255))
    out.paste(rgba, mask=rgba.getchannel('A'))
    return out


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as RGB; transparency is composited on white.

    CMYK uses Pillow's conversion (Pillow already undoes the inverted CMYK of Adobe JPEGs); no ICC
    profile is applied. High bit depth greyscale is scaled to 8 bits, not clipped as Pillow does:
    'I;16' and 'I' as 16-bit values, 'F' as [0, 1].
    """
    if img.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or 'transparency' in img.info:
        return _white_background(img)
    if img.mode == 'RGB':
        return img
    if img.mode.startswith('I') or img.mode == 'F':
        img = Image.fromarray(_grey_to_8_bits(img), 'L')
    return img.convert('RGB')


_CONVERT_PIXELS = 1 << 20  # converted at a time: the float temporaries stay at 8 MB


def _grey_to_8_bits(img: Image.Image) -> np.ndarray:
    """A 16-bit, 32-bit integer or float grey picture as uint8, rounded (``value * scale + 0.5``,
    clipped; NaN is 0): 'F' holds 0..1, an 'I;16' mode 16 bits; 'I' (32 bits) holds 16-bit data when
    it fits (PNG), else its own range. Converted a band of rows at a time, each read at its own
    size: no copy of the whole picture but the 8-bit result (float64 copies of it took gigabytes)."""
    width, height = img.size
    out = np.empty((height, width), np.uint8)
    top = 1.0 if img.mode == 'F' or img.mode.startswith('I;16') else float(max(img.getextrema()[1], 0))
    scale = 255.0 if img.mode == 'F' else 255 / 65535 if img.mode.startswith('I;16') or top <= 65535 else 255 / top
    step = max(1, _CONVERT_PIXELS // max(1, width))
    for row in range(0, height, step):
        values = np.asarray(img.crop((0, row, width, min(height, row + step))))
        if img.mode.startswith('I;16'):  # round(v / 257) exactly, in integers
            out[row:row + step] = (values.astype(np.uint32) + 128) // 257
            continue
        band = values.astype(np.float64)
        band *= scale
        band += 0.5
        np.clip(band, 0, 255, out=band)
        np.nan_to_num(band, copy=False, nan=0.0)
        out[row:row + step] = band
    return out


def _stored_box(box: tuple[float, float, float, float], orientation: int,
                stored_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The region of the stored (not yet transposed) pixels that ``box`` of the upright picture shows."""
    x0, y0, x1, y1 = box
    width, height = stored_size
    if orientation in (5, 6, 7, 8):  # the upright x axis runs along the stored y axis
        xs = (y0, y1) if orientation in (5, 6) else (width - y1, width - y0)
        ys = (x0, x1) if orientation in (5, 8) else (height - x1, height - x0)
    else:
        xs = (width - x1, width - x0) if orientation in (2, 3) else (x0, x1)
        ys = (height - y1, height - y0) if orientation in (3, 4) else (y0, y1)
    return xs[0], ys[0], xs[1], ys[1]


def _draft_reduction(ratio: float) -> int:
    """The largest JPEG DCT reduction (8, 4 or 2; else 1) that leaves a region ``ratio`` times the
    output at least the output's size."""
    for factor in (8, 4, 2):
        if ratio >= factor:
            return factor
    return 1


def _ratio(box, target: tuple[int, int]) -> float:
    """How many times the output (``target``: height, width) the region ``box`` is, on its tighter side."""
    return min((box[2] - box[0]) / target[1], (box[3] - box[1]) / target[0])


def _spng_decodes(img: Image.Image) -> bool:
    """Whether pyspng decodes ``img`` to the very pixels Pillow would: an 8-bit RGB PNG without a
    transparent colour (the common case; others keep Pillow's conversions) held in memory."""
    return (img.format == 'PNG' and img.mode == 'RGB' and 'transparency' not in img.info
            and len(img.tile) == 1 and img.tile[0].args == 'RGB' and isinstance(img.fp, io.BytesIO))


def _decode_region(img: Image.Image, stored_box: tuple[float, float, float, float],
                   target: tuple[int, int]) -> np.ndarray:
    """The region ``stored_box`` of the stored pixels, decoded to a uint8 ``[H, W, C]`` array (RGB,
    with C = 4 a padding byte after each pixel) no smaller than ``target`` (height, width, stored
    orientation), at a reduced scale where the decoder allows (JPEG DCT scaling, Pillow's box
    reduce for a region many times the output).

    8-bit RGB PNGs go to pyspng (libspng), which decodes them faster than Pillow with the
    same pixels (bench/RESULTS.md, "Decode and decoders"); the rest to Pillow.
    """
    ratio = _ratio(stored_box, target)
    if int(ratio // REDUCING_GAP) < 2 and _spng_decodes(img):  # a region to box-reduce keeps Pillow
        x0, y0, x1, y1 = (round(v) for v in stored_box)
        try:
            return pyspng.load(img.fp.getvalue(), 'RGB')[y0:y1, x0:x1]
        except RuntimeError as exc:  # pyspng reports every broken file this way
            raise SampleError('bad-image', f'{image_name(img)}: cannot decode PNG data: {exc}') from None
    full_width = img.width
    reduction = _draft_reduction(ratio)
    if reduction > 1:
        drafted = img.draft('RGB', (img.width // reduction, img.height // reduction))
        # None: not a JPEG, or one libjpeg cannot scale. Else the full picture's extent when drafted.
        reduction = 1 if drafted is None else full_width / drafted[1][2]
    # Rounded to whole decoded pixels: at most half a decoded pixel, so half an output pixel, off.
    box = tuple(round(v / reduction) for v in stored_box)
    try:
        img.load()
        rgb = to_rgb(img)
        # A region many times the output (a large PNG, which cannot be decoded at a reduced scale) is
        # box-reduced by Pillow straight from the decoded picture, as Pillow's own reducing_gap
        # does: no full-size copy of the crop, and the bicubic pass runs on a small image.
        gap = int(_ratio(box, target) // REDUCING_GAP)
        if gap >= 2:
            return np.asarray(rgb.reduce(gap, box=box))
    except DECODE_ERRORS as exc:
        raise SampleError('bad-image', f'{image_name(img)}: cannot decode {img.format or "image"} data: {exc}') from None
    return _pixels_of(rgb)[box[1]:box[3], box[0]:box[2]]


def _pixels_of(rgb: Image.Image) -> np.ndarray:
    """An RGB image's pixels as a read-only array over Pillow's own memory (its Arrow export: no
    copy): ``[H, W, 4]``, RGB and a padding byte, as Pillow keeps them. An image Pillow keeps in
    several blocks (over 16 MB) cannot be exported: a ``[H, W, 3]`` copy then."""
    try:
        buffer = pa.array(rgb).buffers()[-1]
    except ValueError:
        return np.asarray(rgb)
    return np.frombuffer(buffer, np.uint8).reshape(rgb.height, rgb.width, 4)


def _resize(region: np.ndarray, target: tuple[int, int]) -> torch.Tensor:
    """``region`` (``[H, W, 3 or 4]``, see ``_decode_region``) resized to ``target`` (height,
    width; bicubic, antialiased), as a uint8 ``[3, H, W]`` view of pixels stored channels last
    (``float_planes`` makes the planes). A region already that size is taken as it is (bicubic at
    scale 1 is the identity), which saves a whole pass for a JPEG decoded at exactly the output scale.

    torch's uint8 antialiased bicubic is Pillow's BICUBIC filter (output within 1/255 of
    ``Image.resize``, 2/255 when enlarging) in vectorised (AVX2) code, much faster than Pillow's
    own resampler, which otherwise takes as long as the reduced-scale JPEG decode. That code works
    on 4 bytes a pixel: Pillow's padded pixels go in as they are (a 3-channel view of them would be
    copied first, at twice the cost of the resize), and the padding channel is dropped after.

    The batch of one is made by adding its axis before the permute: its strides then say channels
    last, and torch writes the output in that layout too. Added after (``unsqueeze`` of the
    ``[C, H, W]`` view), the axis gets a stride that reads as planar; torch then repacked its
    result into planes in a scalar pass that cost as much as the resampling (bench/RESULTS.md,
    "Per sample and the decode floor"), where ``float_planes`` reads 4-byte pixels as they are.
    """
    with warnings.catch_warnings():
        # Pillow's arrays are read-only views of its bytes; nothing here writes to them (the output
        # is new, and every square is copied by float_planes), so no copy is made for torch.
        warnings.simplefilter('ignore', UserWarning)
        batch = torch.from_numpy(region).unsqueeze(0).permute(0, 3, 1, 2)
    if tuple(batch.shape[2:]) != tuple(target):
        batch = F.interpolate(batch, size=tuple(target), mode='bicubic', antialias=True)
    return batch[0, :3]


def _load_region_pixels(img: Image.Image, box: tuple[int, int, int, int], target: tuple[int, int],
                        orientation: int | None = None) -> torch.Tensor:
    """The region ``box`` (upright coordinates) of ``img`` resized to ``target`` (height, width), as a
    uint8 ``[3, H, W]`` tensor: the one path of every crop, square or not, without a round trip
    through a PIL image. ``orientation``: the EXIF tag when the caller has read it."""
    orientation = exif_orientation(img) if orientation is None else orientation
    # Decoded and resized as stored; turned upright last, on the small result.
    stored_target = (target[1], target[0]) if orientation in (5, 6, 7, 8) else tuple(target)
    region = _decode_region(img, _stored_box(box, orientation, img.size), stored_target)
    pixels = _resize(region, stored_target)
    if orientation in _UPRIGHT:
        pixels = _UPRIGHT[orientation](pixels)
    return pixels


def load_square(img: Image.Image, box: tuple[int, int, int, int], image_size: int) -> Image.Image:
    """Decode ``img`` and return the region ``box`` (upright full-resolution coordinates) as an RGB
    ``image_size`` x ``image_size`` picture (bicubic).

    ``img`` comes straight from ``open_image`` (or is a decoded full-resolution image); it is
    decoded in place, at a reduced scale for JPEG. Truncated data -> ``SampleError('bad-image')``.
    """
    return Image.fromarray(_load_region_pixels(img, box, (image_size, image_size)).permute(1, 2, 0).numpy(), 'RGB')


def to_pixel_values(img: Image.Image) -> torch.Tensor:
    """An RGB picture as a float32 ``[3, H, W]`` tensor in [-1, 1]."""
    return float_planes(torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1))


@dataclass(frozen=True)
class Placement:
    """Where a sample's pixels come from, as SDXL-style micro-conditioning takes it: the picture's
    upright ``original_size`` (height, width), and ``crop_coords`` (top, left) of the crop in the
    picture as resized to cover the output."""

    original_size: tuple[int, int]
    crop_coords: tuple[int, int]


def load_pixels(data: bytes, name: str, target: tuple[int, int], rng: random.Random, *,
                crop_mode: str = 'random', min_image_size: int = 80, max_aspect: float = 10.0,
                max_pixels: int = DEFAULT_MAX_PIXELS, crop: bool = True,
                normalise: bool = True) -> tuple[torch.Tensor, Placement]:
    """The whole pipeline: ``[3, height, width]`` in [-1, 1] (``target`` = (height, width)) from
    the image in ``data`` resized to cover the target (or ``target(size)``, a function of the
    picture's upright (width, height)) and cropped (``crop_mode`` 'random' or
    'center'; with ``crop=False``, the whole image squeezed, as Harmon's ``crop_image=False``), and
    its ``Placement``; with ``normalise=False``, the uint8 pixels that would be normalised (the
    device normalises them: ``src.datasets.data_preprocessor``). Raises ``SampleError`` (reason
    'bad-image', 'too-large', 'too-small' or 'bad-aspect') naming ``name``.
    """
    img = open_image(data, name, max_pixels=max_pixels)
    orientation = exif_orientation(img)
    size = upright_size(img.size, orientation)  # oriented_size, with the EXIF block read once
    check_size(size, name, min_image_size=min_image_size, max_aspect=max_aspect)
    if callable(target):  # a shape that follows the picture's (src.datasets.sample.image_process)
        target = target(size)
    box = crop_box(size, target, rng, crop_mode) if crop else (0, 0, *size)
    # to_pixel_values(load_square(...)), without making a PIL image in between
    pixels = _load_region_pixels(img, box, target, orientation)
    pixels = float_planes(pixels) if normalise else pixels.contiguous()
    scale = target[0] / (box[3] - box[1])
    return pixels, Placement((size[1], size[0]), (round(box[1] * scale), round(box[0] * scale)))


def load_pixel_values(data: bytes, name: str, image_size: int, rng: random.Random, **options) -> torch.Tensor:
    """``load_pixels`` to a square: ``[3, image_size, image_size]``, a random square crop."""
    return load_pixels(data, name, (image_size, image_size), rng, **options)[0]
