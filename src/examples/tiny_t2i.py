"""``TinyT2I``: a text-to-image model small enough to train on a CPU in seconds, for
``configs/examples/tiny_t2i*.py`` and ``tools/train.py``: the whole data path (prepare, inspect,
cache latents, train, kill, resume) can be seen working before a real model is plugged in.

The prompt's tokens, embedded and averaged, predict a coarse picture of the target: the image (its
``pixel_values``, or its ``image_latents``) averaged over channels and pooled to ``grid`` x ``grid``.
The loss is the mean squared error; it falls within a few dozen steps on the demo data. Each
iteration also logs a digest of its batch (``batch_digest``), so that two runs can be compared
batch by batch (a resumed run against an uninterrupted one).
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.registry import MODELS


@MODELS.register_module()
class TinyT2I(BaseModel):
    """``image_key``: 'pixel_values' or 'image_latents', as the dataloader's batches hold them;
    ``vocab``: token ids are taken modulo it (any tokenizer fits); ``dim``, ``grid``: sizes;
    ``data_preprocessor``: mmengine's (``T2IDataPreprocessor`` for uint8 pixels)."""

    def __init__(self, image_key: str = 'pixel_values', vocab: int = 4096, dim: int = 64, grid: int = 2,
                 data_preprocessor: dict | None = None):
        super().__init__(data_preprocessor=data_preprocessor)
        self.image_key, self.vocab, self.grid = image_key, vocab, grid
        self.embed = torch.nn.Embedding(vocab, dim)
        self.head = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.GELU(), torch.nn.Linear(dim, grid * grid))

    def forward(self, data: dict, data_samples=None, mode: str = 'loss'):
        ids, mask = data['input_ids'], data['attention_mask']
        tokens = self.embed(ids % self.vocab) * mask[..., None]
        prompt = tokens.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        predicted = self.head(prompt)
        if mode != 'loss':
            return predicted
        image = data[self.image_key].float()
        target = F.adaptive_avg_pool2d(image.mean(1, keepdim=True), self.grid).flatten(1)
        return {'loss': F.mse_loss(predicted, target), 'batch_digest': batch_digest(ids, mask, image)}


def batch_digest(ids: torch.Tensor, mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """48 bits of a digest of the batch's prompts and images, exact in the float64 log."""
    digest = hashlib.blake2b(digest_size=6)
    for part in (ids[mask], image):
        digest.update(part.detach().cpu().contiguous().numpy().tobytes())
    return torch.tensor(float(int.from_bytes(digest.digest(), 'little')), dtype=torch.float64)
