"""Pure PyTorch + transformers core: encoders, fusion head, audio decoding, bundles.

Nothing in this package imports Ray, so training, batch scoring and serving all
reuse it, and it is unit-tested without a cluster.
"""
