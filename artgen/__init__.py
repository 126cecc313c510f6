"""artgen: generative art by transfer learning.

Python API::

    import artgen
    image = artgen.stylize("photo.jpg", {"a.jpg": 0.7, "b.jpg": 0.3}, size=512, seed=0)
    image.save("out.png")
    fast = artgen.stylize("photo.jpg", "painting.jpg", method="adain", strength=0.8)
    mine = artgen.stylize("photo.jpg", method="sdedit", generator="runs/my-art", strength=0.6)
    artgen.stylize_video("clip.mp4", "painting.jpg", "styled.mp4", method="adain")

    run = artgen.finetune_diffusion(artgen.DiffusionFinetuneOptions(
        base="google/ddpm-cifar10-32", images="my_art/", out="runs/my-art"))
    images = artgen.load_run(run).generate(16, seed=0, steps=50)     # PIL images

    gan = artgen.finetune_gan(artgen.GanFinetuneOptions(
        base="runs/base", images="reference/", out="runs/fair", method="fairtl++"))
    images = artgen.load_run(gan).generate(16, seed=0, truncation=0.7)

``artgen.load_run`` returns the run object of the run's kind (artgen.runs: a DiffusionRun or
a GanRun, with ``.kind``, ``.path``, ``.config``, ``.generate`` and ``.sample_grid``). The
older calls still work: ``artgen.generate(pipeline_or_run, n, ...)``,
``artgen.generate_gan(artgen.load_generator(gan), n, ...)`` and ``artgen.sample_run``.
"""

from artgen.errors import ArtgenError, Cancelled
from artgen.finetune.adain import AdaINTrainOptions, train_adain
from artgen.finetune.diffusion import (
    DiffusionFinetuneOptions,
    FinetuneProgress,
    SampleOptions,
    finetune_diffusion,
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
from artgen.runs import DiffusionRun, GanRun, Run, generate, load_run, register_run
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
    "Run",
    "DiffusionRun",
    "GanRun",
    "register_run",
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
