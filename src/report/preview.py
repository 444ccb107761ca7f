"""A preview grid of training samples as the model sees them: the crop and the decoded prompt."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw, ImageFont

TILE = 256
PADDING = 8
CAPTION_LINES = 4
CAPTION_CHARS = 34  # per line at the font size below, for a 256 px tile
FONT_SIZE = 13
TITLE_SIZE = 18
BACKGROUND, TEXT, MUTED = (250, 250, 247), (20, 20, 20), (110, 110, 110)


@dataclass
class Tile:
    image: Image.Image
    caption: str
    note: str = ''  # shown in grey above the caption, e.g. 'unconditional'


def to_image(pixel_values: torch.Tensor) -> Image.Image:
    """A ``[3, S, S]`` tensor in [-1, 1] as an RGB picture."""
    array = ((pixel_values.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).numpy(), 'RGB')


def caption_from_prompt(prompt: str, template: dict) -> tuple[str, bool]:
    """The caption inside a decoded prompt (built with ``template`` as the dataset builds it), and
    whether the prompt is the unconditional (CFG) one."""
    head, tail = template['INSTRUCTION'].split('{input}')
    body = prompt.split(head, 1)[-1].split(tail, 1)[0]
    if body == template['CFG']:
        return body, True
    generation_head, generation_tail = template['GENERATION'].split('{input}')
    return body.removeprefix(generation_head).removesuffix(generation_tail), False


# Fonts that draw Chinese and Japanese captions too (with Latin, Greek and Cyrillic), in order of
# preference; the Makefile installs the first (Debian's fonts-wqy-microhei). DejaVu Sans covers
# accented Latin, which Pillow's built-in font lacks, but draws CJK as empty boxes.
FONTS = ('/usr/share/fonts/truetype/wqy/wqy-microhei.ttc', '/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc',
         '/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc', '/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf',
         'DejaVuSans.ttf')


def _font(size: int) -> ImageFont.ImageFont:
    for name in FONTS:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def grid(rows: list[tuple[str, list[Tile]]]) -> Image.Image:
    """One row per (title, tiles): the title, then the tiles side by side, each with its caption."""
    font, title_font = _font(FONT_SIZE), _font(TITLE_SIZE)
    line_height = FONT_SIZE + 4
    text_height = line_height * (CAPTION_LINES + 1)
    columns = max(len(tiles) for _, tiles in rows)
    width = PADDING + columns * (TILE + PADDING)
    row_height = TITLE_SIZE + 2 * PADDING + TILE + PADDING + text_height
    sheet = Image.new('RGB', (width, PADDING + len(rows) * row_height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for r, (title, tiles) in enumerate(rows):
        top = PADDING + r * row_height
        draw.text((PADDING, top), title, font=title_font, fill=TEXT)
        top += TITLE_SIZE + 2 * PADDING
        for c, tile in enumerate(tiles):
            left = PADDING + c * (TILE + PADDING)
            sheet.paste(tile.image.resize((TILE, TILE), Image.Resampling.BICUBIC), (left, top))
            y = top + TILE + PADDING // 2
            if tile.note:
                draw.text((left, y), tile.note, font=font, fill=MUTED)
                y += line_height
            lines = textwrap.wrap(tile.caption, CAPTION_CHARS) or ['']
            if len(lines) > CAPTION_LINES - bool(tile.note):
                lines = lines[:CAPTION_LINES - bool(tile.note)]
                lines[-1] = lines[-1][:CAPTION_CHARS - 1] + '…'
            for line in lines:
                draw.text((left, y), line, font=font, fill=TEXT)
                y += line_height
    return sheet
