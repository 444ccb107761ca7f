"""The diffusers autoencoder that encodes images to latents, as upstream's latent script uses it.

``AutoencoderDC`` (upstream's: ``mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers``) gives
``encode(x).latent * scaling_factor`` (0.41407 when the config leaves it unset, as upstream);
``AutoencoderKL`` gives ``(mode - shift_factor) * scaling_factor`` with the config's factors (the
distribution's mode: a cache must not depend on a draw).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from src.datasets.extras import require

DC_DEFAULT_SCALING = 0.41407  # upstream's, for a DC-AE config without scaling_factor
KINDS = ('AutoencoderDC', 'AutoencoderKL')


class AutoencoderError(ValueError):
    """``--vae`` names nothing loadable; the message says what and where."""


@dataclass
class Encoder:
    model: torch.nn.Module
    kind: str
    scaling_factor: float
    shift_factor: float
    device: torch.device
    dtype: torch.dtype

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [-1, 1] -> scaled latents ``[B, C, h, w]`` (in ``dtype``)."""
        x = pixels.to(self.device, self.dtype)
        if self.kind == 'AutoencoderDC':
            return self.model.encode(x).latent * self.scaling_factor
        return (self.model.encode(x).latent_dist.mode() - self.shift_factor) * self.scaling_factor


def _kind_of(vae: str) -> str:
    """The autoencoder class a local folder's config names; for a hub id, assume upstream's DC-AE
    unless the id says KL (the hub is then asked by ``from_pretrained`` itself)."""
    config = os.path.join(vae, 'config.json')
    if os.path.isdir(vae):
        try:
            with open(config, encoding='utf-8') as f:
                kind = json.load(f).get('_class_name')
        except (OSError, ValueError) as e:
            raise AutoencoderError(f'--vae {vae}: no readable config.json ({e}); save the model there with '
                                   'save_pretrained, or give a hub id') from None
        if kind not in KINDS:
            raise AutoencoderError(f'--vae {vae}: its config.json names {kind!r}, not one of {KINDS}')
        return kind
    if os.path.exists(vae):
        raise AutoencoderError(f'--vae {vae}: a file, not a model folder (the folder save_pretrained writes)')
    return 'AutoencoderKL' if 'kl' in vae.lower().split('/')[-1].split('-') else 'AutoencoderDC'


def load_encoder(vae: str, device: torch.device, dtype: torch.dtype, **options) -> Encoder:
    """The autoencoder of ``vae`` (a hub id or a local folder), in eval mode on ``device``; ``options``
    go to ``from_pretrained`` (``local_files_only``, see ``src.cli.hub``)."""
    diffusers = require('diffusers')  # here: only the latent tools need it

    kind = _kind_of(vae)
    try:
        model = getattr(diffusers, kind).from_pretrained(vae, **options)
    except (OSError, ValueError) as e:  # diffusers reports a missing model or weights as OSError
        raise AutoencoderError(f'--vae {vae}: cannot load a {kind}: {e}') from None
    model = model.eval().to(device, dtype)
    config = model.config
    scaling = getattr(config, 'scaling_factor', None) or (DC_DEFAULT_SCALING if kind == 'AutoencoderDC' else 1.0)
    shift = getattr(config, 'shift_factor', None) or 0.0
    return Encoder(model, kind, float(scaling), float(shift), device, dtype)
