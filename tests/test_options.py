"""artgen.core.options: one call declares a field's default, help and choices."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

import pytest

from artgen.cli.flags import add_dataclass_flags
from artgen.core.options import choice_error, option


@dataclass(frozen=True)
class Example:
    steps: int = option(10, "training steps")
    scheduler: str = option("ddim", "the sampler", choices=("ddim", "ddpm"))
    levels: int = option(3, "levels", choices=(2, 3))


def test_option_declares_default_help_and_choices():
    f = {x.name: x for x in fields(Example)}
    assert Example() == Example(10, "ddim", 3)
    assert dict(f["steps"].metadata) == {"help": "training steps"}
    assert dict(f["scheduler"].metadata) == {"help": "the sampler", "choices": ("ddim", "ddpm")}
    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, Example)
    assert vars(parser.parse_args(["--scheduler", "ddpm", "--steps", "4"])) == {
        "scheduler": "ddpm",
        "steps": 4,
    }
    with pytest.raises(SystemExit):  # argparse refuses a value outside the choices
        parser.parse_args(["--scheduler", "euler"])


def test_choice_error_names_the_first_field_outside_its_choices():
    assert choice_error(Example()) is None
    assert choice_error(Example(scheduler="euler", levels=4)) == (
        "scheduler",
        "choose one of ddim, ddpm",
    )
    assert choice_error(Example(scheduler="euler", levels=4), skip=("scheduler",)) == (
        "levels",
        "choose one of 2, 3",
    )
    assert choice_error(Example(steps=-5)) is None  # no choices declared: not its business
