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
Adding a kind of run is one module under artgen/runs/ plus one line in
``artgen.runs.options.KINDS`` (tests/test_extending.py does it)::

    # artgen/runs/mymodel.py
    @dataclass(frozen=True)
    class MyModelOptions(RunOptions):         # what its trainer records in config.json
        KIND: ClassVar[str] = "train-mymodel"

    class MyRun(Run):
        kind, title, settings = "mymodel", "my-model", MySampleOptions

        @classmethod
        def load(cls, path, config, device, **kw):
            return cls(path, config or {}, device)

        def _generate(self, n, seed, options):
            return [...]                          # n PIL images

    OPTIONS, RUN = (MyModelOptions,), MyRun
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from artgen.core.errors import ArtgenError
from artgen.core.options import option

# -- each kind's sampling settings (the run record owns them; the trainers import them) -----


@dataclass(frozen=True)
class SampleOptions:
    """``artgen sample``: new images from a fine-tuned run."""

    n: int = option(16, "how many images")
    steps: int = option(50, "denoising steps")
    scheduler: str = option("ddim", "sampler", choices=["ddim", "ddpm"])
    seed: int = option(0, "image i uses seed + i")
    prompt: str = option("", "text-to-image runs: prompt (default: the run's own)")
    guidance_scale: float = option(7.5, "classifier-free guidance")
    batch_size: int = option(8, "images per forward pass")


@dataclass(frozen=True)
class GanSampleOptions:
    """``artgen sample`` flags that only GAN runs use."""

    truncation: float = option(1.0, "GAN runs: truncation psi (1: none; 0.7: safer images)")
    class_index: int = option(
        -1,
        "GAN runs, class-conditional networks: the class to draw (default: "
        "the class the run adapted)",
    )


# Settings every kind takes besides its own ``settings`` fields.
COMMON = {"n": 16, "seed": 0}


class Run:
    """A finished run (or a saved generator) that draws images.

    ``kind``: the short name ("diffusion", "gan"); ``title``: how messages name it;
    ``settings``: the frozen dataclass of its sampling settings (``artgen sample`` makes
    one flag per field); ``extra``: keyword settings for Python callers only, with their
    defaults. Which kinds of run it reads: artgen.runs.options.KINDS.
    """

    kind: ClassVar[str] = ""
    title: ClassVar[str] = ""
    settings: ClassVar[type]
    extra: ClassVar[dict[str, Any]] = {}

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


def kind_class(kind: str) -> type[Run] | None:
    """The Run class of runs of ``kind`` (None for a kind that draws no images)."""
    from artgen.runs.options import kind_module

    return getattr(kind_module(kind), "RUN", None)


def _drawing_kinds() -> dict[str, type[Run]]:
    from artgen.runs.options import KINDS

    found = {kind: kind_class(kind) for kind in KINDS}
    return {kind: cls for kind, cls in found.items() if cls is not None}


def _registered() -> list[type[Run]]:
    return list(dict.fromkeys(_drawing_kinds().values()))


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
        kinds = _drawing_kinds()
        if isinstance(method, str) and method in kinds:
            return kinds[method], config
        shown = repr(method) if isinstance(method, str) else type(method).__name__
        raise ArtgenError(
            f"{root / 'config.json'}: method {shown[:80]} is not a kind of run "
            f"artgen can draw images from (known: {', '.join(kinds)})"
        )
    # No marker: what `artgen sample` has always done (a GAN if the folder holds one).
    from artgen.runs.gan import is_gan_run

    return kind_class("train-gan" if is_gan_run(root) else "finetune-diffusion"), config


def load_run(path: str | os.PathLike, *, device: Any = "cpu", **kw: Any) -> Run:
    """The run in ``path`` as the object of its kind (a DiffusionRun or a GanRun), with its
    weights loaded on ``device`` ("auto" picks one) and checked. ``kw`` go to the kind's
    loader (a DiffusionRun takes ``pipeline=``, an already loaded base)."""
    from artgen.core.devices import resolve_device

    cls, config = run_class(path)
    return cls.load(Path(path), config, resolve_device(device), **kw)


__all__ = [
    "Run",
    "kind_class",
    "load_run",
    "run_class",
    "sample_setting_names",
    "sample_settings",
]
