"""Pieces every command family of the CLI shares: options from parsed flags, progress
bars fed by the library's progress callbacks, and quiet third-party libraries."""

from __future__ import annotations

import argparse
import dataclasses
import os

# Every error is printed on one line of printable characters, and never at length: a
# message may quote a file's contents.
MESSAGE_LIMIT = 1000


def options_from(args: argparse.Namespace, cls: type):
    """An options dataclass from the parsed flags named like its fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


class Bar:
    """A tqdm bar fed by the StylizeProgress callback."""

    def __init__(self, quiet: bool, position: int = 0, leave: bool = True, desc: str = "stylize"):
        self.quiet, self.position, self.leave, self.desc = quiet, position, leave, desc
        self.bar = None

    def __call__(self, p) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm  # the terminal bar (tqdm.auto also imports asyncio)

            self.bar = tqdm(
                total=p.total_steps,
                position=self.position,
                leave=self.leave,
                desc=self.desc,
                unit="it",
                dynamic_ncols=True,
            )
        self.bar.set_postfix_str(
            f"scale {p.scale}/{p.num_scales} {p.width}x{p.height} loss {p.loss:.3g}", False
        )
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StepBar:
    """A tqdm bar for training runs, fed by their progress callback."""

    def __init__(self, quiet: bool, desc: str, postfix):
        self.quiet, self.desc, self.postfix = quiet, desc, postfix
        self.bar = None
        self.step = 0

    def __call__(self, p) -> None:
        from tqdm import tqdm  # the terminal bar (tqdm.auto also imports asyncio)

        if self.bar is None:
            self.bar = tqdm(
                total=p.total_steps,
                initial=p.step - 1,
                desc=self.desc,
                unit="step",
                disable=self.quiet,
                dynamic_ncols=True,
            )
        self.step = p.step
        self.bar.set_postfix_str(self.postfix(p), False)
        self.bar.update(1)
        for what, path in (("samples", p.samples), ("checkpoint", p.checkpoint)):
            if path is not None and not self.quiet:
                self.bar.write(f"step {p.step}: {what} {path}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def quiet_libraries() -> None:
    """diffusers/transformers chatter (hub retries, loading bars) is not for artists."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        import huggingface_hub

        huggingface_hub.utils.logging.set_verbosity_error()
    except AttributeError:
        pass


def download_bar():
    from tqdm import tqdm  # the terminal bar (tqdm.auto also imports asyncio)

    state: dict = {}

    def cb(p) -> None:
        bar = state.get(p.name)
        if bar is None:
            bar = state[p.name] = tqdm(total=p.total, desc=p.name, unit="B", unit_scale=True)
        bar.update(p.done - bar.n)
        if p.total and p.done >= p.total:
            bar.close()

    return cb
