"""Pure PyTorch + transformers core: encoders, fusion heads, audio decoding, bundles, data and training.

Nothing in this package imports Ray, so training, batch scoring and serving all
reuse it, and it is unit-tested without a cluster. ``pipeline`` is the one
in-process pipeline; ``fusion`` the registry of fusion heads; ``data`` reads,
converts and validates manifests; ``training`` and ``demo`` build bundles.
"""
