"""The package version, in one place that imports nothing (modules read it from here, not
from the package root, so that no import cycle goes through artgen/__init__)."""

__version__ = "0.1.0"
