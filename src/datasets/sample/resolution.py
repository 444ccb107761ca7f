"""VGT's per-batch resize of a pixel tensor to the batch's resolution (its ``smart_resize_and_crop``)."""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F

CROP_MODES = ('center_crop', 'random_crop', 'pad_resize')


def fit_to_resolution(pixels: torch.Tensor, resolution: tuple[int, int], mode: str = 'center_crop',
                      rng: random.Random | None = None) -> torch.Tensor:
    """VGT's per-batch resize of a ``[C, H, W]`` tensor to ``resolution`` = (width, height), as its
    ``smart_resize_and_crop`` does: bilinear, keeping the aspect ratio, then a centre or random crop
    ('center_crop', 'random_crop') or zero padding around the whole picture ('pad_resize')."""
    if pixels.dim() != 3:
        raise ValueError(f'expected a [C, H, W] tensor, got shape {tuple(pixels.shape)}')
    if mode not in CROP_MODES:
        raise ValueError(f'crop_mode {mode!r} is not one of {CROP_MODES}')
    _, height, width = pixels.shape
    target_w, target_h = resolution
    scale_w, scale_h = target_w / width, target_h / height
    if mode == 'pad_resize':
        scale = min(scale_w, scale_h)
        new_w, new_h = int(width * scale), int(height * scale)
    else:
        scale = max(scale_w, scale_h)
        new_w, new_h = max(target_w, int(width * scale)), max(target_h, int(height * scale))
    resized = F.interpolate(pixels.unsqueeze(0), size=(new_h, new_w), mode='bilinear', align_corners=False)[0]
    if mode == 'pad_resize':
        pad_w, pad_h = target_w - new_w, target_h - new_h
        return F.pad(resized, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0)
    if mode == 'center_crop':
        top, left = (new_h - target_h) // 2, (new_w - target_w) // 2
    else:
        rng = rng or random
        top, left = rng.randint(0, new_h - target_h), rng.randint(0, new_w - target_w)
    return resized[:, top:top + target_h, left:left + target_w]
