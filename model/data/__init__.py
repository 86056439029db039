"""Datasets as manifests: reading and writing them, converting corpora, validating content, feature tables."""
