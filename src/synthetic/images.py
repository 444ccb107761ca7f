"""Real encoded images, and the broken files real downloads contain, for tests and the demo.

Every picture has structure (gradients, a few shapes, noise) so that crops and resizes of it differ
measurably, and is encoded by Pillow in the format and mode asked for.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

# Which modes each format can store, as Pillow writes them.
FORMAT_MODES = {
    'JPEG': ('RGB', 'L', 'CMYK'),
    'PNG': ('RGB', 'RGBA', 'L', 'LA', 'P', 'P-transparent'),
    'WEBP': ('RGB', 'RGBA'),
}
EXTENSIONS = {'JPEG': '.jpg', 'PNG': '.png', 'WEBP': '.webp'}


def make_picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB picture with smooth gradients, a bright disc and mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 255 * x / max(width - 1, 1)
    g = 255 * y / max(height - 1, 1)
    b = 127.5 + 127.5 * np.sin((x + y) / max(width, height) * 6 + seed)
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
    disc = ((x - cx) ** 2 + (y - cy) ** 2) < (0.15 * min(width, height)) ** 2
    rgb = np.stack([r, g, b], axis=-1)
    rgb[disc] = (250, 240, 30)
    rgb += rng.normal(0, 6, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), 'RGB')


def convert_mode(img: Image.Image, mode: str) -> Image.Image:
    """``img`` in ``mode``; 'P-transparent' is a palette image with one transparent index."""
    if mode == 'P-transparent':
        pal = img.convert('P', palette=Image.Palette.ADAPTIVE, colors=64)
        pal.info['transparency'] = 0
        return pal
    if mode in ('RGBA', 'LA'):
        out = img.convert(mode)
        alpha = Image.linear_gradient('L').resize(img.size)  # transparent top, opaque bottom
        out.putalpha(alpha)
        return out
    if mode == 'P':
        return img.convert('P', palette=Image.Palette.ADAPTIVE, colors=64)
    return img.convert(mode)


def encode_image(width: int, height: int, fmt: str = 'JPEG', mode: str = 'RGB', seed: int = 0,
                 quality: int = 90, exif_orientation: int | None = None) -> bytes:
    """The bytes of a ``width`` x ``height`` picture encoded as ``fmt`` in ``mode``.

    ``exif_orientation`` (JPEG only) stores the pixels transposed with that EXIF tag, so that a
    reader that honours the tag sees a ``width`` x ``height`` picture again.
    """
    fmt = fmt.upper()
    if mode not in FORMAT_MODES[fmt]:
        raise ValueError(f'{fmt} cannot store mode {mode}; it stores {FORMAT_MODES[fmt]}')
    img = convert_mode(make_picture(width, height, seed), mode)
    kwargs = {'quality': quality} if fmt in ('JPEG', 'WEBP') else {}
    if exif_orientation is not None:
        if fmt != 'JPEG':
            raise ValueError('exif_orientation is only written for JPEG')
        inverse = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                   4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                   6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
                   8: Image.Transpose.ROTATE_270}
        img = img.transpose(inverse[exif_orientation])
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs['exif'] = exif.tobytes()
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    """The first ``keep`` fraction of an encoded file, as an interrupted download leaves it."""
    return data[:max(1, int(len(data) * keep))]


def not_an_image() -> bytes:
    """Bytes that no image decoder accepts: an HTML error page saved under an image name."""
    return b'<html><body>403 Forbidden</body></html>\n'


def decompression_bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))

    ihdr = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b'\x00' * 16)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', idat) + chunk(b'IEND', b'')
