"""The fast method's feature transforms, by name: how the photo's features take the style's
before the decoder (artgen.models.adain). Imports nothing (the onnxruntime path, which
must not import PyTorch, reads it too)."""

from __future__ import annotations

# wct: whitening-colouring (Li et al. 2017) at the finest level, AdaIN below it;
# adain: AdaIN at every level (Huang & Belongie 2017).
TRANSFORMS = ("wct", "adain")


def wct_levels(transform: str) -> tuple[int, ...]:
    """The AdaIN levels that get whitening-colouring: the finest one for ``wct`` (on 18
    held-out pairs, the finest level alone gave 0.442 of the 0.449 that all three gave by
    Magenta's judge, with better edges; docs/adain.md)."""
    return (0,) if transform == "wct" else ()


__all__ = ["TRANSFORMS", "wct_levels"]
