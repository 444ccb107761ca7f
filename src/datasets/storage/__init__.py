"""Where a dataset's bytes come from: files, tar shards, object storage, the batch prefetch, and the
locks and atomic writes beside them."""
