"""Adapting pretrained generators to an artist's small image set (one file per method)."""
