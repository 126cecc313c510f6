"""One run object for every kind of generator artgen trains: ``artgen.load_run(path)``.

    run = artgen.load_run("runs/my-art")           # a DiffusionRun or a GanRun
    images = run.generate(16, seed=0)              # PIL images; image i depends on seed + i
    run.sample_grid(16, seed=0).save("grid.png")
    run.kind, run.path, run.config                 # "diffusion" or "gan", the folder, config.json

``artgen sample`` and ``artgen eval`` use nothing else. The kind comes from the "method"
the trainer recorded in the run's config.json (finetune-diffusion, train-gan,
finetune-gan). A folder without that marker (a generator folder, an ``artgen convert``
output, a run recorded before the field) is told apart as artgen always has: a StyleGAN2
network, or a generator/ entry, is a GAN; anything else is taken as a diffusion run, whose
loading then says what is wrong with it.

Sampling settings are each kind's own (``Run.settings``, a frozen dataclass: its fields
are ``artgen sample``'s flags); a setting of another kind is a one-line ArtgenError.
Adding a kind of generator is one class plus its registration::

    @register_run("train-mymodel")            # the "method" its trainer records
    class MyRun(Run):
        kind, title, settings = "mymodel", "my-model", MySampleOptions

        @classmethod
        def load(cls, path, config, device, **kw):
            return cls(path, config or {}, device)

        def _generate(self, n, seed, options):
            return [...]                          # n PIL images
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from artgen.core.errors import ArtgenError

# -- each kind's sampling settings (the run record owns them; the trainers import them) -----


@dataclass(frozen=True)
class SampleOptions:
    """``artgen sample``: new images from a fine-tuned run."""

    n: int = field(default=16, metadata={"help": "how many images"})
    steps: int = field(default=50, metadata={"help": "denoising steps"})
    scheduler: str = field(
        default="ddim", metadata={"help": "sampler", "choices": ["ddim", "ddpm"]}
    )
    seed: int = field(default=0, metadata={"help": "image i uses seed + i"})
    prompt: str = field(
        default="", metadata={"help": "text-to-image runs: prompt (default: the run's own)"}
    )
    guidance_scale: float = field(default=7.5, metadata={"help": "classifier-free guidance"})
    batch_size: int = field(default=8, metadata={"help": "images per forward pass"})


@dataclass(frozen=True)
class GanSampleOptions:
    """``artgen sample`` flags that only GAN runs use."""

    truncation: float = field(
        default=1.0, metadata={"help": "GAN runs: truncation psi (1: none; 0.7: safer images)"}
    )
    class_index: int = field(
        default=-1,
        metadata={
            "help": "GAN runs, class-conditional networks: the class to draw (default: "
            "the class the run adapted)"
        },
    )


# Settings every kind takes besides its own ``settings`` fields.
COMMON = {"n": 16, "seed": 0}


class Run:
    """A finished run (or a saved generator) that draws images.

    ``kind``: the short name ("diffusion", "gan"); ``title``: how messages name it;
    ``settings``: the frozen dataclass of its sampling settings (``artgen sample`` makes
    one flag per field); ``extra``: keyword settings for Python callers only, with their
    defaults. ``methods``: the config.json "method" values it reads (set by register_run).
    """

    kind: ClassVar[str] = ""
    title: ClassVar[str] = ""
    settings: ClassVar[type]
    extra: ClassVar[dict[str, Any]] = {}
    methods: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: str | os.PathLike, config: dict, device: Any):
        self.path = Path(path)
        self.config = config  # the run's config.json ({} for a bare network folder)
        self.device = device

    @classmethod
    def load(cls, path: Path, config: dict | None, device: Any, **kw: Any) -> Run:
        """The run in ``path``; ``config``: its config.json as load_run read it (None if it
        has none, or it is a network's own config)."""
        raise NotImplementedError

    @property
    def method(self) -> str | None:
        """What the run's config.json records as its "method" (None for a bare network)."""
        m = self.config.get("method")
        return m if isinstance(m, str) else None

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        own = [f.name for f in dataclasses.fields(cls.settings)]
        return tuple(dict.fromkeys([*COMMON, *own, *cls.extra]))

    @classmethod
    def check_settings(cls, names: Collection[str], path: str | os.PathLike) -> None:
        """ArtgenError unless this kind takes every setting in ``names`` (``artgen sample``
        checks its flags with it before loading any weights)."""
        allowed = cls.setting_names()
        for name in names:
            if name in allowed:
                continue
            owners = [c for c in _registered() if name in c.setting_names()]
            if owners:
                raise ArtgenError(
                    f"--{name.replace('_', '-')}: only for {owners[0].title} runs, "
                    f"and {path} is a {cls.title} run"
                )
            raise ArtgenError(
                f"{name}: not a sampling setting of {cls.title} runs (they take "
                f"{', '.join(allowed)})"
            )

    def _options(self, kw: dict[str, Any]) -> tuple[int, int, Any, dict[str, Any]]:
        """(n, seed, the settings dataclass, the extra settings), checked."""
        self.check_settings(kw, self.path)
        n, seed = kw.get("n", COMMON["n"]), kw.get("seed", COMMON["seed"])
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ArtgenError(f"-n {n}: must be >= 1")
        own = {f.name for f in dataclasses.fields(self.settings)}
        options = self.settings(**{k: v for k, v in kw.items() if k in own})
        extra = {k: kw.get(k, v) for k, v in self.extra.items()}
        return n, seed, options, extra

    def sample_options(self, **kw: Any) -> dict[str, Any]:
        """The complete settings ``generate(**them)`` draws with (defaults filled in, and
        the run's own where it has one), as ``artgen sample`` records them."""
        n, seed, options, _ = self._options(kw)
        return {"n": n, "seed": seed, **self._record(n, seed, options)}

    def _record(self, n: int, seed: int, options: Any) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(options).items() if k not in COMMON}

    def generate(self, n: int = 16, *, seed: int = 0, **kw: Any) -> list[Image.Image]:
        """``n`` PIL images; image i depends only on ``seed + i``. ``kw``: the kind's
        settings (``setting_names()``)."""
        n, seed, options, extra = self._options({**kw, "n": n, "seed": seed})
        return self._generate(n, seed, options, **extra)

    def _generate(self, n: int, seed: int, options: Any, **extra: Any) -> list[Image.Image]:
        raise NotImplementedError

    def sample_grid(
        self, n: int = 16, *, seed: int = 0, cols: int | None = None, **kw: Any
    ) -> Image.Image:
        """``generate(n, seed=seed, **kw)`` tiled into one picture ``cols`` wide."""
        from artgen.core.images import grid

        return grid(self.generate(n, seed=seed, **kw), cols=cols)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} {str(self.path)!r}>"


# -- the registry -------------------------------------------------------------------------

# config.json's "method" -> the Run class that reads it.
RUNS: dict[str, type[Run]] = {}


def register_run(*methods: str) -> Callable[[type[Run]], type[Run]]:
    """Class decorator: ``cls`` loads the runs whose config.json records one of ``methods``."""

    def add(cls: type[Run]) -> type[Run]:
        for m in methods:
            if RUNS.get(m, cls) is not cls:
                raise ValueError(f"run method {m!r} is already registered ({RUNS[m].__name__})")
            RUNS[m] = cls
        cls.methods = (*cls.methods, *(m for m in methods if m not in cls.methods))
        return cls

    return add


def _registered() -> list[type[Run]]:
    return list(dict.fromkeys(RUNS.values()))


def sample_settings() -> list[type]:
    """The settings dataclasses of every registered kind (``artgen sample``'s flags)."""
    return list(dict.fromkeys(cls.settings for cls in _registered()))


def sample_setting_names() -> set[str]:
    """Every sampling setting some registered kind takes."""
    return {name for cls in _registered() for name in cls.setting_names()}


def run_class(path: str | os.PathLike) -> tuple[type[Run], dict | None]:
    """The Run class for the folder ``path``, and its config.json (None if it has none or
    it is a saved network's own config). The one place where a folder's kind is decided."""
    from artgen.runs.checkpoint import read_run_config

    root = Path(path)
    found = read_run_config(root, missing_ok=True) if (root / "config.json").exists() else None
    config = found[0] if found is not None else None
    if config is not None and config.get("format") == "artgen-stylegan2":
        config = None  # a StyleGAN2 network folder itself
    method = None if config is None else config.get("method")
    if method is not None:
        if isinstance(method, str) and method in RUNS:
            return RUNS[method], config
        shown = repr(method) if isinstance(method, str) else type(method).__name__
        raise ArtgenError(
            f"{root / 'config.json'}: method {shown[:80]} is not a kind of run "
            f"artgen can draw images from (known: {', '.join(RUNS)})"
        )
    # No marker: what `artgen sample` has always done (a GAN if the folder holds one).
    from artgen.train.gan import is_gan_run

    return (RUNS["train-gan"] if is_gan_run(root) else RUNS["finetune-diffusion"]), config


def load_run(path: str | os.PathLike, *, device: Any = "cpu", **kw: Any) -> Run:
    """The run in ``path`` as the object of its kind (a DiffusionRun or a GanRun), with its
    weights loaded on ``device`` ("auto" picks one) and checked. ``kw`` go to the kind's
    loader (a DiffusionRun takes ``pipeline=``, an already loaded base)."""
    from artgen.core.devices import resolve_device

    cls, config = run_class(path)
    return cls.load(Path(path), config, resolve_device(device), **kw)


# -- the kinds ----------------------------------------------------------------------------


@register_run("finetune-diffusion")
class DiffusionRun(Run):
    """A diffusion fine-tuning run: the base pipeline with the run's weights (LoRA or the
    whole UNet). ``pipeline``: the diffusers pipeline; ``training_options``: the run's
    DiffusionFinetuneOptions. Settings: SampleOptions (above)."""

    kind, title = "diffusion", "diffusion"
    settings = SampleOptions

    def __init__(self, path: str | os.PathLike, config: dict, device: Any, pipeline: Any):
        super().__init__(path, config, device)
        self.pipeline = pipeline
        self.training_options = pipeline.artgen_options

    @classmethod
    def load(cls, path: Path, config: dict | None, device: Any, *, pipeline: Any = None) -> Run:
        from artgen.train.diffusion import load_run as load_pipeline

        pipe = load_pipeline(path, pipeline=pipeline, device=device)
        return cls(path, pipe.artgen_config, device, pipe)

    def _generate(self, n: int, seed: int, options: Any, **extra: Any) -> list[Image.Image]:
        from artgen.train.diffusion import generate as generate_pipeline

        return generate_pipeline(
            self.pipeline,
            n,
            seed=seed,
            steps=options.steps,
            scheduler=options.scheduler,
            prompt=options.prompt or self.training_options.prompt,
            guidance_scale=options.guidance_scale,
            resolution=self.config["resolution"],
            batch_size=options.batch_size,
        )


@register_run("train-gan", "finetune-gan")
class GanRun(Run):
    """A StyleGAN2 run (trained or adapted), a generator folder, or an ``artgen convert``
    output. ``generator``: the (EMA) generator; ``class_index``: the class the run adapted
    (-1: none). Settings: GanSampleOptions (above), plus ``batch_size``."""

    kind, title = "gan", "GAN"
    settings = GanSampleOptions
    extra: ClassVar[dict[str, Any]] = {"batch_size": 16}

    def __init__(
        self, path: str | os.PathLike, config: dict, device: Any, generator: Any, class_index: int
    ):
        super().__init__(path, config, device)
        self.generator = generator
        self.class_index = class_index

    @classmethod
    def load(cls, path: Path, config: dict | None, device: Any) -> Run:
        from artgen.train.gan import load_generator, run_class_index

        # The run's config.json (if it has one) is checked first, before a network is built.
        recorded = run_class_index(path)
        G = load_generator(path, device=device)
        return cls(path, config or {}, device, G, recorded)

    def _class(self, class_index: int) -> int:
        """``class_index``, or for -1 the class the run adapted."""
        if class_index != -1:
            return class_index
        c_dim = self.generator.config.c_dim
        if c_dim and self.class_index == -1:
            raise ArtgenError(
                f"{self.path}: a class-conditional generator ({c_dim} "
                f"classes); pass --class-index K (0 to {c_dim - 1})"
            )
        return self.class_index if c_dim else -1

    def _record(self, n: int, seed: int, options: Any) -> dict[str, Any]:
        record = super()._record(n, seed, options)
        if record.get("class_index") == -1:  # record the class actually drawn
            record["class_index"] = self.class_index
        return record

    def _generate(self, n: int, seed: int, options: Any, **extra: Any) -> list[Image.Image]:
        from artgen.train.gan import generate_gan

        return generate_gan(
            self.generator,
            n,
            seed=seed,
            truncation_psi=options.truncation,
            batch_size=extra["batch_size"],
            class_index=self._class(options.class_index),
        )


__all__ = [
    "DiffusionRun",
    "GanRun",
    "RUNS",
    "Run",
    "load_run",
    "register_run",
    "run_class",
    "sample_setting_names",
    "sample_settings",
]
