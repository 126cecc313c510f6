"""`artgen sample` and `artgen eval`: pictures from a finished run, and their metrics.

Both go through the run object (artgen.runs.record.load_run), which knows each kind of run;
sample's flags are each kind's sample settings, eval's come from EvalOptions, and each
metric prints itself (artgen.eval.registry).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from artgen.cli.common import options_from, quiet_libraries
from artgen.cli.flags import add_dataclass_flags
from artgen.core.errors import ArtgenError

COMMANDS = ("sample", "eval")


def add_commands(sub: argparse._SubParsersAction, method: str) -> None:
    """sample and eval."""
    from artgen.eval.evaluate import EvalOptions
    from artgen.runs.record import sample_settings

    smp = sub.add_parser("sample", help="new images from a fine-tuned run, as one grid")
    smp.add_argument("run", help="run folder written by artgen finetune")
    smp.add_argument("-o", "--output", required=True, help="output PNG (a grid)")
    smp.add_argument("--each", metavar="DIR", help="also write every image to DIR")
    smp.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    smp.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    seen: set[str] = set()
    for settings in sample_settings():  # each kind of run's own flags (artgen.runs.record)
        add_dataclass_flags(smp, settings, skip=seen)
        seen |= {f.name for f in dataclasses.fields(settings)}
    smp.set_defaults(func=_cmd_sample)

    ev = sub.add_parser(
        "eval", help="FID/KID, diversity, attribute proportions (--metrics) of a fine-tuned run"
    )
    ev.add_argument("run", help="run folder written by artgen finetune")
    ev.add_argument("--json", action="store_true", help="print only the JSON")
    add_dataclass_flags(ev, EvalOptions)
    ev.set_defaults(func=_cmd_eval)


def _cmd_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    from artgen._version import __version__
    from artgen.core.images import check_output, check_output_dir, grid, save_png
    from artgen.runs.record import load_run, run_class, sample_setting_names

    quiet_libraries()
    out = args.output
    if not out.lower().endswith(".png"):
        raise ArtgenError(f"{out}: output must be a .png file")
    check_output(out, overwrite=args.overwrite)  # before any compute
    if args.each:
        check_output_dir(args.each)
    # The flags given (absent ones are not in args): each kind takes only its own.
    given = {k: v for k, v in vars(args).items() if k in sample_setting_names()}
    run_class(args.run)[0].check_settings(given, args.run)  # before loading any weights
    run = load_run(args.run, device=args.device)
    options = run.sample_options(**given)
    images = run.generate(**options)
    params = {
        "artgen": __version__,
        "method": "sample",
        "run": str(Path(args.run).resolve()),
        "options": options,
    }
    path = save_png(grid(images), out, params=params, overwrite=args.overwrite)
    if args.each:
        for i, im in enumerate(images):
            save_png(
                im,
                Path(args.each) / f"sample-{options['seed'] + i:05d}.png",
                params={**params, "index": i},
                overwrite=args.overwrite,
            )
    print(f"wrote {path} ({len(images)} images)")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from artgen.eval.evaluate import EvalOptions, evaluate
    from artgen.eval.registry import format_result

    quiet_libraries()
    r = evaluate(args.run, options_from(args, EvalOptions))
    if args.json:
        print(json.dumps(r, indent=2, sort_keys=True))
        return 0
    against = ""
    if "reference" in r:
        against = f" against {r['reference']['count']} in {r['reference']['folder']}"
    print(f"{args.run}: {r['samples']['source']} images{against}")
    for line in format_result(r):  # each metric prints itself (artgen.eval.registry)
        print(line)
    print(f"written to {args.run}/eval.json")
    return 0
