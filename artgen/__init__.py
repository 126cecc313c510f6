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

``artgen.load_run`` returns the run object of the run's kind (a DiffusionRun or a GanRun,
artgen/runs/, with ``.kind``, ``.path``, ``.config``, ``.generate`` and ``.sample_grid``).
"""

from artgen._version import __version__
from artgen.core.errors import ArtgenError, Cancelled

# Where each public name lives. They are imported on first use (PEP 562), so that a command
# which needs no PyTorch (the fast method on onnxruntime, `artgen info`) never imports it.
_LAZY = {
    "artgen.runs.adain": ("AdaINTrainOptions",),
    "artgen.runs.diffusion": ("DiffusionFinetuneOptions", "DiffusionRun"),
    "artgen.runs.gan": ("GanFinetuneOptions", "GanRun", "GanTrainOptions"),
    "artgen.train.adain": ("train_adain",),
    "artgen.train.diffusion": ("FinetuneProgress", "finetune_diffusion"),
    "artgen.train.gan": ("GanProgress", "finetune_gan", "train_gan"),
    "artgen.runs.record": ("Run", "SampleOptions", "load_run"),
    "artgen.style": ("get_method", "method_names", "stylize"),
    "artgen.style.adain": ("AdaINOptions",),
    "artgen.style.gatys": ("StylizeOptions", "StylizeProgress"),
    "artgen.video.pipeline": ("VideoOptions", "VideoProgress", "VideoResult", "stylize_video"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'artgen' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__all__ = ["ArtgenError", "Cancelled", *_WHERE, "__version__"]
