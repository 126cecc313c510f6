"""`artgen finetune`, `train`, `convert` and `export`: adapting and training generators.

Each trainer's flags come from its options dataclass (artgen.train.*); resume and
Ctrl-C are the same for all of them (artgen.train.skeleton).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from artgen.cli.common import StepBar, quiet_libraries
from artgen.cli.flags import add_dataclass_flags
from artgen.core.errors import ArtgenError

FINETUNE_EXAMPLES = """\
examples:
  artgen finetune diffusion --base google/ddpm-cifar10-32 --images my_art/ --out runs/cifar-art
  artgen finetune diffusion --base runwayml/stable-diffusion-v1-5 --images my_art/ \\
      --out runs/sd-art --prompt "a painting in sks style" --class-prompt "a painting"
  artgen finetune diffusion --base ./my-base --images faces/ --labels faces.csv --balance hair \\
      --out runs/fair
  artgen finetune diffusion --out runs/cifar-art --resume            # continue after Ctrl-C
  artgen finetune gan --base runs/my-gan --images ten_paintings/ --out runs/few-shot --freeze-d 2
  artgen finetune gan --base runs/biased --images balanced_ref/ --method fairtl++ --out runs/fair
  artgen sample runs/cifar-art -n 16 -o grid.png
"""

TRAIN_ADAIN_EXAMPLES = """\
examples:
  artgen train adain --content photos/ --styles paintings/ --out runs/adain
  artgen train adain --base shipped --styles my_art/ --out runs/my-style --steps 300
  artgen train adain --out runs/adain --resume --steps 40000     # continue after Ctrl-C
  artgen stylize photo.jpg --style my_art/a.jpg --method adain --model runs/my-style -o out.png
"""


COMMANDS = ("finetune", "train", "convert", "export")


def add_commands(sub: argparse._SubParsersAction, method: str) -> None:
    """finetune diffusion|gan, train gan|adain, convert, export."""
    from artgen.core.transforms import TRANSFORMS
    from artgen.runs.adain import AdaINTrainOptions
    from artgen.runs.diffusion import DiffusionFinetuneOptions
    from artgen.runs.gan import GanFinetuneOptions, GanTrainOptions
    from artgen.style.adain import AdaINOptions

    # (command, family) -> options, handler, help, examples: one row per trainer.
    trainers = {
        ("finetune", "diffusion"): (
            DiffusionFinetuneOptions,
            _cmd_finetune,
            "fine-tune a diffusers pipeline (full or LoRA)",
            FINETUNE_EXAMPLES,
        ),
        ("finetune", "gan"): (
            GanFinetuneOptions,
            lambda a: _cmd_gan(a, "finetune"),
            "adapt a pretrained StyleGAN2 (FreezeD, CDC, DiffAugment, fairTL, fairTL++)",
            FINETUNE_EXAMPLES,
        ),
        ("train", "gan"): (
            GanTrainOptions,
            lambda a: _cmd_gan(a, "train"),
            "train a StyleGAN2 on a folder of images",
            None,
        ),
        ("train", "adain"): (
            AdaINTrainOptions,
            _cmd_train_adain,
            "train the fast style method's decoder, or fine-tune it to an artist's styles",
            TRAIN_ADAIN_EXAMPLES,
        ),
    }
    for command, about in (
        ("finetune", "adapt a pretrained generator to your images"),
        ("train", "train a generator from scratch (a base of your own)"),
    ):
        families = sub.add_parser(command, help=about).add_subparsers(
            dest="family", metavar="FAMILY", required=True
        )
        for (of, family), (options, handler, about, examples) in trainers.items():
            if of != command:
                continue
            p = families.add_parser(
                family,
                help=about,
                epilog=examples,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
            add_dataclass_flags(p, options)
            p.set_defaults(func=handler)

    cv = sub.add_parser(
        "convert", help="StyleGAN2-ADA network pickle -> artgen folders (safetensors)"
    )
    cv.add_argument("pickle", help="network-snapshot-*.pkl from NVlabs/stylegan2-ada-pytorch")
    cv.add_argument("out", help="folder to create: OUT/generator and OUT/discriminator")
    cv.set_defaults(func=_cmd_convert)

    ex = sub.add_parser(
        "export",
        help="a text-to-image LoRA run as one kohya-style file (ComfyUI, A1111), "
        "or the fast method as ONNX (`artgen export onnx`)",
        epilog=EXPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument(
        "run",
        help="a finished artgen finetune diffusion run (method lora), or the word onnx",
    )
    ex.add_argument(
        "-o",
        "--output",
        default="",
        help="file to write (default: RUN/lora/lora_kohya.safetensors; for onnx: fast.onnx)",
    )
    ex.add_argument(
        "--model",
        default="shipped",
        help="onnx only: the fast network to export (shipped, or a folder from "
        "`artgen train adain`)",
    )
    ex.add_argument("--overwrite", action="store_true", help="onnx only: replace the output")
    ex.add_argument(
        "--transform",
        default=AdaINOptions.__dataclass_fields__["transform"].default,
        choices=list(TRANSFORMS),
        help="onnx only: the feature transform the graph does (as stylize's --transform)",
    )
    ex.set_defaults(func=_cmd_export)


def _training_options(args: argparse.Namespace, cls: type, options_for_resume):
    """The options of a training command: from the flags, or from the run being resumed."""
    given = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)
    }
    if given.get("resume"):
        if not given.get("out"):
            raise ArtgenError("--resume: give the run folder with --out")
        out = given.pop("out")
        options = options_for_resume(out, **given)
        if not isinstance(options, cls):
            raise ArtgenError(f"{out}: holds a {options.KIND} run, not a {cls.KIND} one")
        return options
    return cls(**given)


def _run_training(train, options, bar: StepBar, command: str):
    """Run a trainer with its progress bar; Ctrl-C prints how to continue (exit 130)."""
    from artgen.core.errors import Cancelled

    try:
        run = train(options, callback=bar)
    except (KeyboardInterrupt, Cancelled):
        bar.close()
        print(
            f"artgen: interrupted at step {bar.step}; checkpoint saved. Continue with:\n"
            f"  artgen {command} --out {options.out} --resume",
            file=sys.stderr,
        )
        return None
    finally:
        bar.close()
    return run


def _cmd_finetune(args: argparse.Namespace) -> int:
    from artgen.runs.diffusion import DiffusionFinetuneOptions
    from artgen.runs.options import options_for_resume
    from artgen.train.diffusion import finetune_diffusion

    quiet_libraries()
    options = _training_options(args, DiffusionFinetuneOptions, options_for_resume)
    bar = StepBar(args.quiet, "finetune", lambda p: f"loss {p.loss:.4f} lr {p.lr:.2e}")
    run = _run_training(finetune_diffusion, options, bar, "finetune diffusion")
    if run is None:
        return 130
    if os.environ.get("RANK", "0") == "0":  # one line, also under accelerate/torchrun
        print(f"done: {run} (model card {run / 'README.md'}, samples {run / 'samples'})")
    return 0


def _cmd_gan(args: argparse.Namespace, what: str) -> int:

    from artgen.runs.gan import GanFinetuneOptions, GanTrainOptions
    from artgen.runs.options import options_for_resume
    from artgen.train.gan import finetune_gan, train_gan

    cls = GanFinetuneOptions if what == "finetune" else GanTrainOptions
    options = _training_options(args, cls, options_for_resume)
    bar = StepBar(args.quiet, f"{what} gan", lambda p: f"G {p.loss_g:.3f} D {p.loss_d:.3f}")
    train = finetune_gan if what == "finetune" else train_gan
    run = _run_training(train, options, bar, f"{what} gan")
    if run is None:
        return 130
    if os.environ.get("RANK", "0") == "0":
        print(f"done: {run} (model card {run / 'README.md'}, samples {run / 'samples'})")
    return 0


def _cmd_train_adain(args: argparse.Namespace) -> int:
    from artgen.runs.adain import AdaINTrainOptions
    from artgen.runs.options import options_for_resume
    from artgen.train.adain import train_adain

    options = _training_options(args, AdaINTrainOptions, options_for_resume)
    bar = StepBar(
        args.quiet,
        "train adain",
        lambda p: f"loss {p.loss:.3f} content {p.content_loss:.3f} style {p.style_loss:.3f}",
    )
    run = _run_training(train_adain, options, bar, "train adain")
    if run is None:
        return 130
    print(
        f"done: {run} (network {run / 'model'}, samples {run / 'samples'}); use it with "
        f"--method adain --model {run}"
    )
    return 0


EXPORT_EXAMPLES = """examples:
  artgen export my_lora_run                      # -> my_lora_run/lora/lora_kohya.safetensors
  artgen export onnx -o fast.onnx                # the fast method (encoder, AdaIN, decoder)
  artgen export onnx --model my_adain_run -o mine.onnx

The ONNX graph takes content (1,3,H,W) and style (1,3,h,w) in [0,1] and alpha (0-1), any
sizes; it is checked against PyTorch (within 1e-3) before the command ends. Needs the onnx
extra: pip install 'artgen[onnx]'."""


def _cmd_export(args: argparse.Namespace) -> int:
    if args.run == "onnx" and not Path(args.run).is_dir():
        return _export_onnx(args)
    from artgen.train.diffusion import export_lora

    path = export_lora(args.run, args.output)
    print(f"kohya-style LoRA: {path} (ComfyUI: models/loras/; A1111: models/Lora/)")
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from artgen.core.images import check_output
    from artgen.interop.onnx_export import export_onnx
    from artgen.interop.weights import load_adain

    out = check_output(args.output or "fast.onnx", overwrite=args.overwrite)
    from artgen.core.transforms import wct_levels
    from artgen.style.adain import BORDER

    wct = wct_levels(args.transform)
    model = load_adain(args.model, "cpu")
    report = export_onnx(model, out, border=BORDER, wct=wct, overwrite=args.overwrite)
    diff = report["max_abs_diff"]
    checked = (
        f"matches PyTorch to {diff:.1e}" if diff == diff else "not checked: onnxruntime missing"
    )
    print(f"ONNX (opset {report['opset']}): {out} ({checked})")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from artgen.interop.convert import convert_stylegan2_pickle

    written = convert_stylegan2_pickle(args.pickle, args.out)
    for name, path in written.items():
        print(f"{name}: {path}")
    print(f"use it as a base: artgen finetune gan --base {args.out} --images DIR --out RUN")
    return 0
