"""artgen: generative art by transfer learning.

Python API::

    import artgen
    image = artgen.stylize("photo.jpg", {"a.jpg": 0.7, "b.jpg": 0.3}, size=512, seed=0)
    image.save("out.png")
"""

from artgen.errors import ArtgenError, Cancelled
from artgen.style.gatys import StylizeOptions, StylizeProgress, stylize

__version__ = "0.1.0"
__all__ = [
    "ArtgenError",
    "Cancelled",
    "StylizeOptions",
    "StylizeProgress",
    "stylize",
    "__version__",
]
