"""How one record becomes a sample: image decoding and cropping, aspect-ratio buckets, token ids."""
