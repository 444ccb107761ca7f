"""The preview grid draws every caption's characters: CJK ones as glyphs, not empty boxes."""
from __future__ import annotations

import numpy as np
from PIL import Image

from src.report.preview import Tile, grid


def caption_pixels(caption: str) -> np.ndarray:
    sheet = grid([('title', [Tile(Image.new('RGB', (64, 64)), caption)])])
    return np.asarray(sheet.convert('L'))[-80:]  # the caption's lines, under the picture


def test_cjk_and_cyrillic_captions_are_drawn_as_their_glyphs():
    # With a font that lacks them every character is the same empty box: the drawings would be equal.
    for first, second in (('東京', '夜景'), ('ночной', 'город'), ('猫の写真', '犬の写真')):
        assert (caption_pixels(first) != caption_pixels(second)).any(), (first, second)
    assert (caption_pixels('東京') != caption_pixels('')).any()
