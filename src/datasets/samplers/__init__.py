"""Samplers at upstream's import paths: ``multi_source_sampler.FixedBatchMultiSourceSampler``."""
