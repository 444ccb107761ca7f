"""image_io: each step alone, the composed pipeline, the fast path against a plain reference, and
every kind of bad file."""
from __future__ import annotations

import functools
import io
import random
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from src.datasets.errors import SampleError
from src.datasets.sample import image_io, planes
from src.datasets.sample.image_io import check_size, load_pixel_values, load_square, random_square_box, \
    to_pixel_values, to_rgb
from src.datasets.storage.images import DEFAULT_MAX_PIXELS, open_image, oriented_size
from src.synthetic.images import (FORMAT_MODES, convert_mode, decompression_bomb_png, encode_image,
                                  make_picture, not_an_image, truncated)

FORMAT_MODE_PAIRS = [(fmt, mode) for fmt, modes in FORMAT_MODES.items() for mode in modes]


def encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def cached_image(width: int, height: int, fmt: str, mode: str = 'RGB') -> bytes:
    return encode_image(width, height, fmt, mode, seed=2)


@functools.lru_cache(maxsize=None)
def smooth_picture(width: int, height: int, fmt: str) -> bytes:
    """Gradients only: no edges, so any difference between two resamplings is the method's."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([255 * x / (width - 1), 255 * y / (height - 1),
                    127.5 + 100 * np.sin((x + 2 * y) / 300)], axis=-1)
    return encoded(Image.fromarray(rgb.round().astype(np.uint8), 'RGB'), fmt, quality=90)


def reference_square(data: bytes, box, image_size: int) -> np.ndarray:
    """The plain path: full decode, EXIF transpose, RGB, crop, resize (bicubic)."""
    img = to_rgb(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    return np.asarray(img.crop(box).resize((image_size, image_size), Image.Resampling.BICUBIC))


def fast_square(data: bytes, image_size: int, seed: int):
    img = open_image(data, 'sample.img')
    box = random_square_box(oriented_size(img), random.Random(seed))
    return box, np.asarray(load_square(img, box, image_size))


def abs_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.float64) - b.astype(np.float64))


def pixel_values_of(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 127.5 - 1


# --- the whole pipeline ------------------------------------------------------------------------

@pytest.mark.parametrize('fmt,mode', FORMAT_MODE_PAIRS)
@pytest.mark.parametrize('width,height,image_size', [(81, 500, 64), (257, 257, 256), (640, 480, 64)])
def test_pixel_values_for_every_format_and_mode(fmt, mode, width, height, image_size):
    data = encode_image(width, height, fmt, mode, seed=3)
    pixels = load_pixel_values(data, f'img/a{fmt}.{mode}', image_size, random.Random(0))
    assert pixels.shape == (3, image_size, image_size)
    assert pixels.dtype == torch.float32
    assert pixels.min() >= -1 and pixels.max() <= 1
    assert pixels.std() > 0.1  # a picture, not a flat fill


def test_same_rng_gives_same_pixels_and_another_seed_another_crop():
    data = encode_image(900, 300, 'JPEG', seed=1)
    first = load_pixel_values(data, 'a.jpg', 128, random.Random(5))
    again = load_pixel_values(data, 'a.jpg', 128, random.Random(5))
    other = load_pixel_values(data, 'a.jpg', 128, random.Random(6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


# --- the steps ---------------------------------------------------------------------------------

def test_check_size_follows_upstream_rule():
    check_size((81, 81), 'ok.jpg')
    check_size((999, 100), 'ok.jpg')
    for size in [(80, 500), (500, 80), (10, 10)]:
        with pytest.raises(SampleError, match='small.jpg') as err:
            check_size(size, 'small.jpg')
        assert err.value.reason == 'too-small'
    for size in [(1000, 100), (100, 1000), (3000, 200)]:
        with pytest.raises(SampleError, match='long.jpg') as err:
            check_size(size, 'long.jpg')
        assert err.value.reason == 'bad-aspect'
    check_size((120, 100), 'ok.jpg', min_image_size=99, max_aspect=1.25)
    with pytest.raises(SampleError):
        check_size((125, 100), 'long.jpg', min_image_size=99, max_aspect=1.25)


def test_elongated_image_is_refused_by_the_pipeline():
    with pytest.raises(SampleError, match='wide.png') as err:
        load_pixel_values(encode_image(3000, 200, 'PNG'), 'wide.png', 64, random.Random(0))
    assert err.value.reason == 'bad-aspect'


@pytest.mark.parametrize('size', [(81, 500), (3000, 200), (257, 257), (2048, 1536), (1536, 2048)])
def test_random_square_box_is_a_square_inside_the_picture(size):
    width, height = size
    boxes = {random_square_box(size, random.Random(seed)) for seed in range(50)}
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert x1 - x0 == y1 - y0 == min(width, height)
    assert len(boxes) > 1 or width == height
    assert random_square_box(size, random.Random(7)) == random_square_box(size, random.Random(7))


def test_to_pixel_values_maps_0_255_to_minus_one_one_channel_first():
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 255
    rgb[0, 0] = (0, 128, 255)
    pixels = to_pixel_values(Image.fromarray(rgb))
    assert pixels.shape == (3, 4, 6) and pixels.dtype == torch.float32
    assert torch.allclose(pixels, pixel_values_of(rgb))
    assert pixels[0, 1, 1] == 1 and pixels[1, 1, 1] == -1


NORMALISERS = {'compiled': planes.float_planes, 'numpy': planes._numpy_normalise}


@pytest.mark.parametrize('normalise', NORMALISERS.values(), ids=NORMALISERS.keys())
def test_normalise_is_exactly_torchs_float_division_from_every_layout(normalise):
    values = (torch.arange(3 * 32 * 32) % 256).to(torch.uint8)  # every value, 12 times
    padded = torch.cat([values.view(32, 32, 3), torch.zeros(32, 32, 1, dtype=torch.uint8)], -1)
    # rows twice as long as the crops taken of them
    wide, wide3 = torch.cat([padded, padded], 1), torch.cat([values.view(32, 32, 3)] * 2, 1)
    read_only = np.frombuffer(padded.numpy().tobytes(), np.uint8).reshape(32, 32, 4)  # as Pillow exports
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # torch on a read-only array: nothing writes
        exported = torch.from_numpy(read_only).permute(2, 0, 1)[:3]
    layouts = {'planar': values.view(3, 32, 32),
               "Pillow's 4-byte pixels": padded.permute(2, 0, 1)[:3],
               'read-only 4-byte pixels': exported,
               '3-byte pixels': values.view(32, 32, 3).permute(2, 0, 1),
               'a crop of 4-byte pixels': wide[3:29, 40:61].permute(2, 0, 1)[:3],
               'a crop of 3-byte pixels': wide3[3:29, 40:61].permute(2, 0, 1),
               'a crop of planes': values.view(3, 32, 32)[:, 5:, 7:20],
               'flipped': padded.permute(2, 0, 1)[:3].flip(-1),
               'transposed': values.view(3, 32, 32).transpose(1, 2),
               'rotated': padded.permute(2, 0, 1)[:3].rot90(1, (-2, -1)),
               'one pixel': values.view(32, 32, 3)[:1, :1].permute(2, 0, 1)}
    for name, pixels in layouts.items():
        before = pixels.clone()
        got = normalise(pixels)
        assert got.dtype == torch.float32 and got.is_contiguous() and got.shape == pixels.shape, name
        assert torch.equal(got, pixels.float() / 127.5 - 1), name
        assert got.min() == -1 and got.max() == 1 or name in ('a crop of planes', 'one pixel'), name
        assert torch.equal(pixels, before), name


def test_normalise_names_what_it_cannot_take():
    with pytest.raises(ValueError, match=r'uint8 \[3, H, W\].*torch.float32 \[3, 4, 4\]'):
        planes.float_planes(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match=r'torch.uint8 \[4, 4\]'):
        planes.float_planes(torch.zeros(4, 4, dtype=torch.uint8))
    # the compiled loop checks what it is handed itself: dtypes, shapes, a contiguous output
    output, read_only = np.zeros((3, 4, 4), np.float32), np.zeros((3, 4, 4), np.float32)
    read_only.flags.writeable = False
    for pixels, out in [(np.zeros((3, 4, 4), np.float32), output), (np.zeros((4, 4, 3), np.uint8), output),
                        (np.zeros((3, 4, 4), np.uint8), np.zeros((3, 4, 4), np.float64)),
                        (np.zeros((3, 4, 5), np.uint8), output),
                        (np.zeros((3, 4, 4), np.uint8), np.zeros((3, 4, 8), np.float32)[:, :, ::2]),
                        (np.zeros((3, 4, 4), np.uint8), read_only)]:
        with pytest.raises((ValueError, BufferError)):  # numpy's buffer export raises either
            planes._compiled_normalise(pixels, out)
    assert not output.any()


@pytest.mark.parametrize('channels', [3, 4])
def test_resize_leaves_the_pixels_channels_last_for_normalise_to_unpack(channels):
    # torch resizes in the layout the input's strides suggest; read as planar, it repacked its
    # output plane by plane in a pass as slow as the resampling. Same pixels either way.
    region = np.random.default_rng(0).integers(0, 256, (90, 120, channels), dtype=np.uint8)[:, 10:100]
    square = image_io._resize(region, (64, 64))
    assert square.shape == (3, 64, 64) and square.stride() == (1, 64 * channels, channels)
    planar = F.interpolate(torch.from_numpy(np.ascontiguousarray(region)).permute(2, 0, 1)[None].contiguous(),
                           size=(64, 64), mode='bicubic', antialias=True)[0, :3]
    assert torch.equal(square, planar)
    assert torch.equal(planes.float_planes(square), planar.float() / 127.5 - 1)


# --- colour conversion ---------------------------------------------------------------------------

def test_cmyk_jpeg_comes_back_as_its_colour():
    # Pillow stores CMYK JPEGs Adobe-inverted and undoes it when reading; the colour must survive.
    cmyk = (30, 200, 100, 50)
    data = encoded(Image.new('CMYK', (200, 200), cmyk), 'JPEG', quality=95)
    assert Image.open(io.BytesIO(data)).info.get('adobe') is not None
    expected = [round((255 - c) * (255 - cmyk[3]) / 255) for c in cmyk[:3]]  # (181, 44, 124)
    _, square = fast_square(data, 96, seed=0)
    assert np.abs(square.reshape(-1, 3).mean(axis=0) - expected).max() < 3


@pytest.mark.parametrize('mode', ['RGBA', 'LA', 'P-transparent'])
def test_transparent_pixels_become_white(mode):
    img = Image.new('RGBA', (100, 100), (255, 0, 0, 255))
    img.paste((0, 0, 255, 0), (0, 0, 50, 100))  # left half fully transparent
    if mode == 'LA':
        img = img.convert('LA')
    elif mode == 'P-transparent':
        img = img.convert('RGB').convert('P', palette=Image.Palette.ADAPTIVE, colors=4)
        img.info['transparency'] = img.getpixel((0, 0))
    rgb = np.asarray(to_rgb(Image.open(io.BytesIO(encoded(img, 'PNG')))))
    assert (rgb[:, :50] == 255).all()
    assert (rgb[:, 50:] != 255).any()


def test_half_transparent_red_is_blended_on_white():
    img = Image.new('RGBA', (10, 10), (255, 0, 0, 128))
    assert np.abs(np.asarray(to_rgb(img))[0, 0].astype(int) - (255, 127, 127)).max() <= 1


@pytest.mark.parametrize('mode,key_colour,other', [('L', 40, 200), ('RGB', (10, 20, 30), (200, 0, 0))])
def test_transparency_colour_key_in_info_becomes_white(mode, key_colour, other):
    img = Image.new(mode, (20, 10), other)
    img.paste(key_colour, (0, 0, 10, 10))
    reread = Image.open(io.BytesIO(encoded(img, 'PNG', transparency=key_colour)))
    assert 'transparency' in reread.info
    rgb = np.asarray(to_rgb(reread))
    assert (rgb[:, :10] == 255).all()
    assert (rgb[:, 10:] == np.asarray(Image.new(mode, (1, 1), other).convert('RGB'))[0, 0]).all()


@pytest.mark.parametrize('mode,value,expected', [('I;16', 40000, 156), ('I', 65535, 255), ('I', 0, 0),
                                                 ('F', 0.5, 128), ('1', 1, 255), ('L', 77, 77)])
def test_high_depth_and_bilevel_modes_scale_to_8_bits(mode, value, expected):
    rgb = np.asarray(to_rgb(Image.new(mode, (3, 2), value)))
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert (rgb == expected).all()


def test_16_bit_png_is_scaled_not_clipped():
    data = encoded(Image.fromarray(np.full((100, 100), 32768, np.uint16)), 'PNG')
    pixels = load_pixel_values(data, 'deep.png', 64, random.Random(0))
    assert torch.allclose(pixels, torch.full_like(pixels, 128 / 127.5 - 1), atol=1 / 127.5)


# --- orientation ---------------------------------------------------------------------------------

@pytest.mark.parametrize('orientation', range(2, 9))
def test_every_exif_orientation_gives_the_upright_picture(orientation):
    upright = encode_image(640, 400, 'JPEG', seed=4)
    rotated = encode_image(640, 400, 'JPEG', seed=4, exif_orientation=orientation)
    assert oriented_size(open_image(rotated, 'r.jpg')) == (640, 400)
    for seed in range(3):
        expected = load_pixel_values(upright, 'u.jpg', 128, random.Random(seed))
        got = load_pixel_values(rotated, 'r.jpg', 128, random.Random(seed))
        assert (got - expected).abs().mean() * 127.5 < 2  # only JPEG re-encoding differs


# --- the fast path against the plain one ---------------------------------------------------------

@pytest.mark.parametrize('fmt,mode,width,height,image_size', [
    ('JPEG', 'RGB', 2048, 1536, 512), ('JPEG', 'RGB', 1536, 2048, 256), ('JPEG', 'RGB', 1001, 999, 64),
    ('JPEG', 'L', 1200, 900, 256), ('JPEG', 'CMYK', 1200, 900, 128), ('PNG', 'RGBA', 700, 500, 256),
    ('PNG', 'P', 500, 700, 64), ('WEBP', 'RGB', 900, 600, 256), ('JPEG', 'RGB', 81, 500, 256)])
def test_fast_path_matches_plain_decode_crop_resize(fmt, mode, width, height, image_size):
    data = cached_image(width, height, fmt, mode)
    for seed in range(2):
        box, square = fast_square(data, image_size, seed)
        assert abs_difference(square, reference_square(data, box, image_size)).mean() < 3


@pytest.mark.parametrize('fmt', ['JPEG', 'PNG', 'WEBP'])
@pytest.mark.parametrize('image_size', [64, 256, 512])
def test_fast_path_on_a_smooth_picture_is_close_everywhere(fmt, image_size):
    data = smooth_picture(2048, 1536, fmt)
    box, square = fast_square(data, image_size, seed=1)
    difference = abs_difference(square, reference_square(data, box, image_size))
    assert difference.mean() < 1.5 and difference.max() <= 8


@pytest.mark.parametrize('width,height,image_size,reduction', [
    (2048, 1536, 512, 2), (2048, 1536, 256, 4), (2048, 1536, 64, 8), (1000, 700, 256, 2),
    (1000, 700, 351, 1), (257, 257, 256, 1)])
def test_jpeg_is_decoded_at_the_smallest_scale_that_covers_the_crop(width, height, image_size, reduction):
    img = open_image(cached_image(width, height, 'JPEG'), 'a.jpg')
    box = random_square_box(oriented_size(img), random.Random(0))
    load_square(img, box, image_size)
    assert img.size == (-(-width // reduction), -(-height // reduction))
    assert min(width, height) * img.width / width >= image_size


# --- bad files -----------------------------------------------------------------------------------

@pytest.mark.parametrize('make,reason', [
    (lambda: b'', 'bad-image'),
    (not_an_image, 'bad-image'),
    (lambda: truncated(encode_image(640, 480, 'JPEG')), 'bad-image'),
    (lambda: truncated(encode_image(640, 480, 'PNG')), 'bad-image'),
    (lambda: truncated(encode_image(640, 480, 'WEBP')), 'bad-image'),
    (lambda: truncated(encode_image(640, 480, 'JPEG'), keep=0.02), 'bad-image'),
    (decompression_bomb_png, 'too-large'),
    (lambda: encode_image(80, 300, 'JPEG'), 'too-small'),
])
def test_bad_input_gives_a_sample_error_naming_the_file(make, reason):
    name = 'shard-7/00042.jpg'
    with pytest.raises(SampleError) as err:
        load_pixel_values(make(), name, 64, random.Random(0))
    assert err.value.reason == reason
    assert name in str(err.value)
    assert err.value.__context__ is None or err.value.__suppress_context__  # no Pillow traceback


@pytest.mark.parametrize('pillow_limit', [None, Image.MAX_IMAGE_PIXELS])
def test_bomb_is_refused_from_its_header_whatever_pillows_limit(monkeypatch, pillow_limit):
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', pillow_limit)
    # Claims 1e8 pixels: past DEFAULT_MAX_PIXELS, yet only a warning to Pillow at its default limit.
    bomb = decompression_bomb_png(10_000, 10_000)
    assert 10_000 * 10_000 > DEFAULT_MAX_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with pytest.raises(SampleError, match='bomb.png') as err:
            open_image(bomb, 'bomb.png')  # its pixel data is 16 bytes: a decode would fail as bad-image
    assert err.value.reason == 'too-large'


def test_max_pixels_bounds_an_ordinary_picture():
    data = encode_image(300, 200, 'PNG')
    with pytest.raises(SampleError, match='big.png') as err:
        load_pixel_values(data, 'big.png', 64, random.Random(0), max_pixels=300 * 200 - 1)
    assert err.value.reason == 'too-large'
    assert load_pixel_values(data, 'big.png', 64, random.Random(0), max_pixels=300 * 200).shape == (3, 64, 64)


def test_truncated_data_fails_in_load_square_after_a_good_header():
    img = open_image(truncated(encode_image(640, 480, 'JPEG')), 'cut.jpg')
    with pytest.raises(SampleError, match='cut.jpg') as err:
        load_square(img, random_square_box(oriented_size(img), random.Random(0)), 64)
    assert err.value.reason == 'bad-image'


@pytest.mark.parametrize('orientation', [None, 6])
def test_pipeline_equals_its_steps_composed(orientation):
    data = encode_image(700, 450, 'JPEG', seed=8, exif_orientation=orientation)
    img = open_image(data, 'a.jpg')
    size = oriented_size(img)
    check_size(size, 'a.jpg')
    steps = to_pixel_values(load_square(img, random_square_box(size, random.Random(3)), 200))
    pipeline = load_pixel_values(data, 'a.jpg', 200, random.Random(3))
    assert torch.equal(steps, pipeline) and pipeline.is_contiguous()


# --- decoders ------------------------------------------------------------------------------------

def _opened(img: Image.Image, **save) -> Image.Image:
    return open_image(encoded(img, 'PNG', **save), 'a.png')


def png_rgb_16_bit(width: int, height: int) -> bytes:
    """A 48-bit RGB PNG, which Pillow cannot write: Pillow opens it as 'RGB' cut to 8 bits."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))
    row = b'\x00' + b'\x80\x00' * 3 * width
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 16, 2, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(row * height)) + chunk(b'IEND', b''))


def test_pyspng_takes_only_the_pngs_it_decodes_as_pillow_does():
    rgb = make_picture(120, 90, seed=1)
    assert image_io._spng_decodes(_opened(rgb))
    assert image_io._spng_decodes(_opened(rgb, interlace=1))
    for other in [convert_mode(rgb, 'RGBA'), convert_mode(rgb, 'P'), convert_mode(rgb, 'L'),
                  Image.fromarray(np.asarray(rgb)[..., 0].astype(np.uint16) * 257)]:
        assert not image_io._spng_decodes(_opened(other)), other.mode
    deep = open_image(png_rgb_16_bit(120, 90), 'deep.png')
    assert deep.mode == 'RGB' and not image_io._spng_decodes(deep)
    assert torch.allclose(load_pixel_values(png_rgb_16_bit(120, 90), 'deep.png', 64, random.Random(0)),
                          torch.full((3, 64, 64), 128 / 127.5 - 1), atol=1e-6)
    assert not image_io._spng_decodes(_opened(rgb, transparency=(0, 0, 0)))  # composited on white
    assert not image_io._spng_decodes(open_image(encode_image(120, 90, 'JPEG'), 'a.jpg'))


@pytest.mark.parametrize('width,height,image_size,interlace', [(300, 200, 128, 0), (200, 300, 200, 1),
                                                               (257, 400, 256, 0)])
def test_pyspng_pixels_equal_pillows(monkeypatch, width, height, image_size, interlace):
    data = encoded(make_picture(width, height, seed=4), 'PNG', interlace=interlace)
    through_spng = [load_pixel_values(data, 'a.png', image_size, random.Random(seed)) for seed in range(3)]
    monkeypatch.setattr(image_io, '_spng_decodes', lambda img: False)
    through_pillow = [load_pixel_values(data, 'a.png', image_size, random.Random(seed)) for seed in range(3)]
    for spng, pillow in zip(through_spng, through_pillow):
        assert torch.equal(spng, pillow)


def test_broken_png_through_pyspng_is_a_bad_image_naming_the_file():
    data = encode_image(300, 200, 'PNG')
    assert image_io._spng_decodes(open_image(data, 'a.png'))
    with pytest.raises(SampleError, match='shard-1/cut.png') as err:
        load_pixel_values(truncated(data), 'shard-1/cut.png', 128, random.Random(0))
    assert err.value.reason == 'bad-image' and err.value.__suppress_context__


def test_a_crop_already_at_the_output_size_is_not_resampled():
    # 512x768 JPEG to 256: drafted to 256x384, so the crop is 256 a side and is used as decoded.
    data = encode_image(512, 768, 'JPEG', seed=6)
    pixels = load_pixel_values(data, 'a.jpg', 256, random.Random(1))
    img = Image.open(io.BytesIO(data))
    img.draft('RGB', (256, 384))
    box = random_square_box((512, 768), random.Random(1))
    expected = np.asarray(img.convert('RGB').crop(tuple(v // 2 for v in box)))
    assert torch.equal(pixels, pixel_values_of(expected.copy()))


@pytest.mark.parametrize('size', [(300, 200), (2100, 2100)])  # one block, and several (over 16 MB)
def test_pixels_of_gives_pillows_pixels_with_or_without_a_copy(size):
    rgb = make_picture(*size, seed=3)
    pixels = image_io._pixels_of(rgb)
    assert np.array_equal(pixels[..., :3], np.asarray(rgb))
