"""Tiny diffusers autoencoders (random weights from a small config), saved where ``--vae`` loads them:
what tests and the walkthrough encode latents with, since no hub model can be downloaded there."""
from __future__ import annotations

from pathlib import Path

KINDS = ('AutoencoderDC', 'AutoencoderKL')


def build_autoencoder(folder, kind: str = 'AutoencoderDC', seed: int = 0) -> str:
    """Save a tiny ``kind`` (4 latent channels, 4x smaller a side) into ``folder``; return its path."""
    import torch

    from src.datasets.extras import require
    diffusers = require('diffusers')
    if kind == 'AutoencoderDC':
        model = diffusers.AutoencoderDC(
            in_channels=3, latent_channels=4, attention_head_dim=8, encoder_block_types='ResBlock',
            decoder_block_types='ResBlock', encoder_block_out_channels=(8, 16), decoder_block_out_channels=(8, 16),
            encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1), encoder_qkv_multiscales=((), ()),
            decoder_qkv_multiscales=((), ()), upsample_block_type='interpolate', downsample_block_type='Conv',
            scaling_factor=0.5)
    elif kind == 'AutoencoderKL':
        model = diffusers.AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=('DownEncoderBlock2D',) * 2,
            up_block_types=('UpDecoderBlock2D',) * 2, block_out_channels=(8, 16), layers_per_block=1,
            latent_channels=4, norm_num_groups=4, sample_size=64, scaling_factor=0.3, shift_factor=0.1)
    else:
        raise ValueError(f'kind {kind!r} is not one of {KINDS}')
    torch.manual_seed(seed)
    model.save_pretrained(folder)
    return str(Path(folder))
