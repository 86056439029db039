"""The fusion heads by architecture name: the registry ``bundle.json``'s ``fusion.architecture`` picks from.

A new head subclasses ``FusionHead`` (``model.fusion.base``), sets ``architecture``
and is added with ``register``; a bundle naming it then loads it, with no other change.
"""

from __future__ import annotations

from model.fusion.base import DEFAULT_ARCHITECTURE, SCORE_RANGE, FusionConfig, FusionHead, FusionOutput
from model.fusion.cross_modal_attention import CrossModalAttentionHead

__all__ = ["ARCHITECTURES", "DEFAULT_ARCHITECTURE", "SCORE_RANGE", "CrossModalAttentionHead", "FusionConfig",
           "FusionHead", "FusionOutput", "build_head", "head_class", "register"]

ARCHITECTURES: dict[str, type[FusionHead]] = {}


def register(cls: type[FusionHead]) -> type[FusionHead]:
    """Add a head class under its ``architecture`` name (usable as a class decorator)."""
    if ARCHITECTURES.get(cls.architecture, cls) is not cls:
        raise ValueError(f"fusion architecture {cls.architecture!r} is already registered")
    ARCHITECTURES[cls.architecture] = cls
    return cls


def head_class(architecture: str) -> type[FusionHead]:
    try:
        return ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(f"unknown fusion architecture {architecture!r}; "
                         f"known: {', '.join(sorted(ARCHITECTURES))}") from None


def build_head(config: FusionConfig) -> FusionHead:
    """A randomly initialised head of the config's architecture."""
    return head_class(config.architecture)(config)


register(CrossModalAttentionHead)
