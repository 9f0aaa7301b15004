"""Data: dataset indexers, manifests, decoding, sampling, transforms, the prepared store."""
