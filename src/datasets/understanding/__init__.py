"""Image-to-text (understanding) datasets, Harmon's; importing this registers them in mmengine's ``DATASETS``."""
