"""artgen: generative art by transfer learning.

Python API::

    import artgen
    image = artgen.stylize("photo.jpg", {"a.jpg": 0.7, "b.jpg": 0.3}, size=512, seed=0)
    image.save("out.png")
    fast = artgen.stylize("photo.jpg", "painting.jpg", method="adain", strength=0.8)
    artgen.stylize_video("clip.mp4", "painting.jpg", "styled.mp4", method="adain")

    run = artgen.finetune_diffusion(artgen.DiffusionFinetuneOptions(
        base="google/ddpm-cifar10-32", images="my_art/", out="runs/my-art"))
    images = artgen.generate(artgen.load_run(run), 16, seed=0)

    gan = artgen.finetune_gan(artgen.GanFinetuneOptions(
        base="runs/base", images="reference/", out="runs/fair", method="fairtl++"))
    images = artgen.generate_gan(artgen.load_generator(gan), 16, seed=0)
"""

from artgen.errors import ArtgenError, Cancelled
from artgen.finetune.adain import AdaINTrainOptions, train_adain
from artgen.finetune.diffusion import (
    DiffusionFinetuneOptions,
    FinetuneProgress,
    SampleOptions,
    finetune_diffusion,
    generate,
    load_run,
    sample_run,
)
from artgen.finetune.gan import (
    GanFinetuneOptions,
    GanProgress,
    GanTrainOptions,
    finetune_gan,
    generate_gan,
    load_generator,
    train_gan,
)
from artgen.style import get_method, method_names, stylize
from artgen.style.adain import AdaINOptions
from artgen.style.gatys import StylizeOptions, StylizeProgress
from artgen.video import VideoOptions, VideoProgress, VideoResult, stylize_video

__version__ = "0.1.0"
__all__ = [
    "AdaINOptions",
    "AdaINTrainOptions",
    "ArtgenError",
    "get_method",
    "method_names",
    "train_adain",
    "DiffusionFinetuneOptions",
    "FinetuneProgress",
    "GanFinetuneOptions",
    "GanProgress",
    "GanTrainOptions",
    "finetune_gan",
    "generate_gan",
    "load_generator",
    "train_gan",
    "SampleOptions",
    "finetune_diffusion",
    "generate",
    "load_run",
    "sample_run",
    "Cancelled",
    "StylizeOptions",
    "StylizeProgress",
    "stylize",
    "stylize_video",
    "VideoOptions",
    "VideoProgress",
    "VideoResult",
    "__version__",
]
