"""Image latents cached once and read by ``*_latents`` configs: the autoencoder (``autoencoder``),
where a latent lives and how it is written (``store``), and the resumable encoding job (``cache``)."""
