"""The `artgen` command line. The only layer that parses argv and prints.

Flags for the method come from the fields of the options dataclasses, so each
default is written once (in artgen.style.gatys.StylizeOptions / BatchOptions).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

from artgen.cli.flags import add_dataclass_flags as _add_dataclass_flags
from artgen.errors import ArtgenError, clip

EXAMPLES = """\
examples:
  artgen stylize photo.jpg --style swirls -o out.png
  artgen stylize photo.jpg --style a.jpg:0.7 --style b.jpg:0.3 --size 768 -o out.png
  artgen stylize photo.jpg --style waves --method adain -o fast.png        # under a second
  artgen stylize photo.jpg --style starry-night --preserve-color luminance --strength 2 -o out.png
  artgen batch photos/ --style mosaic -o stylised/ --shard 1/2
  artgen batch photos/ --style mosaic --method adain -o fast/
  artgen video clip.mp4 --style waves --method adain -o styled.mp4
  artgen info out.png
  artgen styles list
  artgen weights fetch vgg19
"""

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

# Every error is printed on one line of printable characters, and never at length: a
# message may quote a file's contents.
MESSAGE_LIMIT = 1000


def _style_arg(s: str) -> tuple[str, float]:
    """PATH_OR_NAME[:WEIGHT]"""
    path, sep, w = s.rpartition(":")
    if sep and path:
        try:
            return path, float(w)
        except ValueError:
            pass
    return s, 1.0


class _MaskAction(argparse.Action):
    """``--mask PATH``: the mask of the ``--style`` just before it (argparse reads flags in
    order, so the styles seen so far are in the namespace). Stored as {style index: path}."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        styles = getattr(namespace, "style", None) or []
        masks = dict(getattr(namespace, self.dest, None) or {})
        if not styles:
            parser.error(f"--mask {value}: put it after the --style it belongs to")
        if len(styles) - 1 in masks:
            parser.error(
                f"--mask {value}: the --style before it ({styles[-1][0]}) already has "
                f"a mask ({masks[len(styles) - 1]}); give each --style one --mask"
            )
        masks[len(styles) - 1] = value
        setattr(namespace, self.dest, masks)


def _mask_flags(p: argparse.ArgumentParser) -> None:
    """--mask (after a --style) and --content-mask, for stylize and batch."""
    g = p.add_argument_group("regional styles (masks: white where it applies, grey partly)")
    g.add_argument(
        "--mask",
        action=_MaskAction,
        dest="masks",
        default=None,
        metavar="MASK",
        help="the region of the --style just before it: that style applies where MASK is "
        "white. Styles without a --mask share what the masks leave (all of it, without "
        "masks); where nothing covers, the photo stays. Resized to the output",
    )
    g.add_argument(
        "--content-mask",
        metavar="MASK",
        default=None,
        help="where MASK is white, the photo stays unstylised (soft edges blend)",
    )


def _load_masks(args: argparse.Namespace):
    """(masks aligned with args.style or None, content mask or None), loaded: a bad mask
    fails here, before any model is loaded."""
    from artgen.images import load_mask

    given = getattr(args, "masks", None) or {}
    masks = [load_mask(given[i]) if i in given else None for i in range(len(args.style))]
    cmask = getattr(args, "content_mask", None)
    return (masks if given else None), (load_mask(cmask) if cmask else None)


VIDEO_EXAMPLES = """\
examples:
  artgen video clip.mp4 --style waves --method adain -o styled.mp4          # fast, steady
  artgen video clip.mp4 --style swirls --size 256 --iterations 100 -o slow.mp4   # Gatys
  artgen video frames/ --style mosaic --method adain --fps 30 -o styled/    # folders too
  artgen video clip.mp4 --style waves --method adain --consistency none -o flicker.mp4
  artgen video long.mp4 --style waves --shard 2/4 -o styled.mp4             # one of 4 machines
"""

TRAIN_ADAIN_EXAMPLES = """\
examples:
  artgen train adain --content photos/ --styles paintings/ --out runs/adain
  artgen train adain --base shipped --styles my_art/ --out runs/my-style --steps 300
  artgen train adain --out runs/adain --resume --steps 40000     # continue after Ctrl-C
  artgen stylize photo.jpg --style my_art/a.jpg --method adain --model runs/my-style -o out.png
"""


def build_parser(method: str = "gatys") -> argparse.ArgumentParser:
    """The parser; ``stylize`` and ``batch`` get the flags of ``method``'s options."""
    from artgen import __version__
    from artgen.style import DEFAULT_METHOD, METHODS, get_method
    from artgen.style.batch import BatchOptions

    style_method = get_method(method if method in METHODS else DEFAULT_METHOD)

    p = argparse.ArgumentParser(
        prog="artgen",
        description="Generative art by transfer learning.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"artgen {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--style",
            action="append",
            required=True,
            type=_style_arg,
            metavar="STYLE[:WEIGHT]",
            help="style image path or catalogue name (see `artgen styles list`), with an optional "
            "blend weight; repeat to blend several",
        )
        sp.add_argument(
            "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)"
        )
        sp.add_argument(
            "--weights", help="path to the backbone's weights file (else TORCH_HOME is searched)"
        )
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        summaries = "; ".join(f"{n}: {get_method(n).summary}" for n in METHODS)
        sp.add_argument(
            "--method",
            choices=list(METHODS),
            default=DEFAULT_METHOD,
            help=f"style method ({summaries}). The flags below are {style_method.name}'s; "
            "`--method NAME --help` lists another's (default: gatys)",
        )
        _add_dataclass_flags(sp, style_method.options)

    sp = sub.add_parser(
        "stylize",
        help="stylise one image",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sp.add_argument("content", help="content image")
    sp.add_argument("-o", "--output", required=True, help="output PNG")
    sp.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    common(sp)
    _mask_flags(sp)

    bp = sub.add_parser(
        "batch",
        help="stylise every image in a folder (resumable)",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bp.add_argument("in_dir", help="folder of content images")
    bp.add_argument("-o", "--output", required=True, help="output folder (NAME.png for each input)")
    _add_dataclass_flags(bp, BatchOptions)
    common(bp)
    _mask_flags(bp)

    from artgen.video import VideoOptions

    vp = sub.add_parser(
        "video",
        help="stylise a video or a folder of frames, temporally consistent (resumable)",
        epilog=VIDEO_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    vp.add_argument("input", help="video file (mp4, mov, mkv, webm, gif, avi) or folder of frames")
    vp.add_argument(
        "-o",
        "--output",
        required=True,
        help="output video (.mp4 .mov .mkv .webm .gif) or folder (one PNG per frame)",
    )
    _add_dataclass_flags(vp, VideoOptions)
    common(vp)

    ip = sub.add_parser("info", help="print the parameters stored in a PNG that artgen wrote")
    ip.add_argument("image")
    ip.add_argument("--json", action="store_true", help="print only the JSON")

    wp = sub.add_parser("weights", help="list or download backbone weights")
    wsub = wp.add_subparsers(dest="action", metavar="ACTION", required=True)
    wsub.add_parser("list", help="where each backbone's weights are, and whether they are there")
    wf = wsub.add_parser("fetch", help="download weights (needs the internet)")
    wf.add_argument("name", choices=["vgg19", "adain"])

    ap = sub.add_parser(
        "app", help="serve the artgen studio (a Gradio page) in your browser", add_help=False
    )
    ap.add_argument("app_args", nargs=argparse.REMAINDER, help="see `artgen app --help`")

    from artgen.finetune.diffusion import DiffusionFinetuneOptions

    fp = sub.add_parser("finetune", help="adapt a pretrained generator to your images")
    fsub = fp.add_subparsers(dest="family", metavar="FAMILY", required=True)
    fd = fsub.add_parser(
        "diffusion",
        help="fine-tune a diffusers pipeline (full or LoRA)",
        epilog=FINETUNE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fd.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_dataclass_flags(fd, DiffusionFinetuneOptions)
    from artgen.finetune.gan import GanFinetuneOptions, GanTrainOptions

    fg = fsub.add_parser(
        "gan",
        help="adapt a pretrained StyleGAN2 (FreezeD, CDC, DiffAugment, fairTL, fairTL++)",
        epilog=FINETUNE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fg.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_dataclass_flags(fg, GanFinetuneOptions)

    tp = sub.add_parser("train", help="train a generator from scratch (a base of your own)")
    tsub = tp.add_subparsers(dest="family", metavar="FAMILY", required=True)
    tg = tsub.add_parser("gan", help="train a StyleGAN2 on a folder of images")
    tg.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_dataclass_flags(tg, GanTrainOptions)
    from artgen.finetune.adain import AdaINTrainOptions

    ta = tsub.add_parser(
        "adain",
        help="train the fast style method's decoder, or fine-tune it to an artist's styles",
        epilog=TRAIN_ADAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ta.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_dataclass_flags(ta, AdaINTrainOptions)

    cv = sub.add_parser(
        "convert", help="StyleGAN2-ADA network pickle -> artgen folders (safetensors)"
    )
    cv.add_argument("pickle", help="network-snapshot-*.pkl from NVlabs/stylegan2-ada-pytorch")
    cv.add_argument("out", help="folder to create: OUT/generator and OUT/discriminator")
    ex = sub.add_parser(
        "export", help="a text-to-image LoRA run as one kohya-style file (ComfyUI, A1111)"
    )
    ex.add_argument("run", help="a finished artgen finetune diffusion run (method lora)")
    ex.add_argument(
        "-o",
        "--output",
        default="",
        help="file to write (default: RUN/lora/lora_kohya.safetensors)",
    )

    smp = sub.add_parser("sample", help="new images from a fine-tuned run, as one grid")
    smp.add_argument("run", help="run folder written by artgen finetune")
    smp.add_argument("-o", "--output", required=True, help="output PNG (a grid)")
    smp.add_argument("--each", metavar="DIR", help="also write every image to DIR")
    smp.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    smp.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    from artgen.runs import sample_settings

    seen: set[str] = set()
    for settings in sample_settings():  # each kind of run's own flags (artgen.runs)
        _add_dataclass_flags(smp, settings, skip=seen)
        seen |= {f.name for f in dataclasses.fields(settings)}

    from artgen.evaluate import EvalOptions

    ev = sub.add_parser(
        "eval", help="FID/KID, diversity, attribute proportions (--metrics) of a fine-tuned run"
    )
    ev.add_argument("run", help="run folder written by artgen finetune")
    ev.add_argument("--json", action="store_true", help="print only the JSON")
    _add_dataclass_flags(ev, EvalOptions)

    st = sub.add_parser(
        "styles", help="list the style catalogue or download public-domain paintings"
    )
    ssub = st.add_subparsers(dest="action", metavar="ACTION", required=True)
    ssub.add_parser("list", help="bundled styles and fetchable paintings")
    sf = ssub.add_parser("fetch", help="download paintings (needs the internet)")
    sf.add_argument("names", nargs="*", help="names from `artgen styles list` (default: all)")
    # Dispatch: each command's parser names its handler (no order-sensitive if-chain).
    for parser, handler in (
        (sp, _cmd_stylize),
        (bp, _cmd_batch),
        (vp, _cmd_video),
        (ip, _cmd_info),
        (wp, _cmd_weights),
        (st, _cmd_styles),
        (ap, _cmd_app),
        (fd, _cmd_finetune),
        (fg, lambda a: _cmd_gan(a, "finetune")),
        (tg, lambda a: _cmd_gan(a, "train")),
        (ta, _cmd_train_adain),
        (cv, _cmd_convert),
        (ex, _cmd_export),
        (smp, _cmd_sample),
        (ev, _cmd_eval),
    ):
        parser.set_defaults(func=handler)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["app"]:  # the app parses its own flags (from its AppConfig)
        try:
            return _cmd_app(argparse.Namespace(app_args=argv[1:]))
        except ArtgenError as e:
            print(f"artgen: error: {clip(e, MESSAGE_LIMIT)}", file=sys.stderr)
            return 2
    parser = build_parser(_peek_method(argv))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except ArtgenError as e:
        print(f"artgen: error: {clip(e, MESSAGE_LIMIT)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "artgen: interrupted; finished outputs are kept (run the same command again to resume)",
            file=sys.stderr,
        )
        return 130


# ------------------------------------------------------------------ helpers


def _peek_method(argv: Sequence[str]) -> str:
    """The --method of a stylize/batch command line (its flags depend on it)."""
    for i, a in enumerate(argv):
        if a == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--method="):
            return a.split("=", 1)[1]
    return "gatys"


def _options(args: argparse.Namespace, cls: type):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def _setup(args: argparse.Namespace):
    """The method, its options, the loaded network, the device and the loaded style images."""
    from artgen import catalog
    from artgen.devices import resolve_device
    from artgen.images import load_image
    from artgen.style import get_method

    method = get_method(args.method)
    options = _options(args, method.options)
    device = resolve_device(args.device)
    styles = [(load_image(catalog.resolve(s)), w) for s, w in args.style]
    if sum(w for _, w in styles) <= 0 or any(w < 0 for _, w in styles):
        raise ArtgenError("style weights must be >= 0 and not all zero")
    model = method.load(options, device, args.weights)
    if method.describe is not None:
        print(method.describe(model), file=sys.stderr)
    return method, options, model, device, styles


class _Bar:
    """A tqdm bar fed by the StylizeProgress callback."""

    def __init__(self, quiet: bool, position: int = 0, leave: bool = True, desc: str = "stylize"):
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.quiet, self.position, self.leave, self.desc = quiet, position, leave, desc
        self.bar = None

    def __call__(self, p) -> None:
        if self.quiet:
            return
        if self.bar is None:
            self.bar = self._tqdm(
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


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _cmd_stylize(args: argparse.Namespace) -> int:
    from artgen import catalog
    from artgen.images import OutputClaim, check_output, load_image, save_png
    from artgen.style import run_params

    out = args.output
    if not out.lower().endswith(".png"):
        raise ArtgenError(f"{out}: output must be a .png file (it carries the parameters)")
    inputs = [
        args.content,
        *[str(catalog.resolve(s)) for s, _ in args.style],
        *(args.masks or {}).values(),
        *([args.content_mask] if args.content_mask else []),
    ]
    if any(_same_file(out, i) for i in inputs):
        raise ArtgenError(f"{out}: is one of the inputs; artgen never overwrites an input")
    check_output(out, overwrite=args.overwrite)  # before any compute
    content = load_image(args.content)
    masks, content_mask = _load_masks(args)
    from artgen.style import check_masks, get_method, mask_arguments

    extra = mask_arguments(get_method(args.method), masks, content_mask)
    check_masks(content.size, masks, content_mask)  # before the model loads
    method, options, model, device, styles = _setup(args)
    bar = _Bar(args.quiet)
    with OutputClaim(out):
        try:
            image = method.stylize(
                content, styles, options, model=model, device=device, callback=bar, **extra
            )
        finally:
            bar.close()
        if image.info.get("note"):  # e.g. that it was made in tiles, and why
            print(f"note: {image.info['note']}", file=sys.stderr)
        params = run_params(content, styles, options, image, device, masks, content_mask)
        path = save_png(image, out, params=params, overwrite=args.overwrite)
    print(f"wrote {path} ({image.width}x{image.height})")
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from artgen.style.batch import BatchOptions, plan_batch, run_batch

    batch = _options(args, BatchOptions)
    jobs = plan_batch(args.in_dir, args.output, batch)
    i, n = batch.shard_numbers()
    if not jobs:
        print(f"no images to do in {args.in_dir} (shard {i}/{n})")
        return 0
    from artgen import catalog
    from artgen.images import check_output_dir

    if any(_same_file(j.output, catalog.resolve(s)) for j in jobs for s, _ in args.style):
        raise ArtgenError("an output would overwrite a style image; choose another output folder")
    mask_files = [*(args.masks or {}).values(), *([args.content_mask] if args.content_mask else [])]
    if any(_same_file(j.output, m) for j in jobs for m in mask_files):
        raise ArtgenError("an output would overwrite a mask; choose another output folder")
    check_output_dir(args.output)  # before any compute
    masks, content_mask = _load_masks(args)
    from artgen.style import get_method, mask_arguments

    mask_arguments(get_method(args.method), masks, content_mask)  # refused before any work
    method, options, model, device, styles = _setup(args)
    overall = tqdm(
        total=len(jobs), desc=f"batch {i}/{n}", unit="img", position=0, disable=args.quiet
    )
    bar = _Bar(args.quiet, position=1, leave=False)

    def on_image(k, job):
        bar.close()
        bar.desc = job.source.name

    def on_result(r):
        bar.close()
        if r.status == "failed":
            overall.write(f"failed: {r.error}")
        overall.update(1)

    try:
        results = run_batch(
            jobs,
            styles,
            options,
            batch,
            model=model,
            device=device,
            on_image=on_image,
            on_result=on_result,
            callback=bar,
            masks=masks,
            content_mask=content_mask,
        )
    finally:
        bar.close()
        overall.close()
    done = sum(r.status == "done" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    by_other = sum(r.status == "skipped" and r.error is not None for r in results)
    failed = [r for r in results if r.status == "failed"]
    print(
        f"{done} stylised, {skipped} already done (skipped"
        + (f"; {by_other} by another run" if by_other else "")
        + f"), {len(failed)} failed -> {args.output}"
    )
    for r in failed:
        print(f"  failed: {r.error}")
    return 1 if failed else 0


def _cmd_video(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from artgen import catalog
    from artgen.style import get_method
    from artgen.video import VideoOptions, plan_video, run_video

    video = _options(args, VideoOptions)
    plan = plan_video(
        args.input, args.output, _options(args, get_method(args.method).options), video
    )
    for s, _ in args.style:
        style = str(catalog.resolve(s))
        if _same_file(style, args.output) or (
            plan.kind == "folder" and _same_file(os.path.dirname(style), plan.cache)
        ):
            raise ArtgenError(f"{args.output}: would overwrite the style image {style}")
    method, options, model, device, styles = _setup(args)
    i, n = video.shard_numbers()
    share = plan.last - plan.first
    overall = tqdm(
        total=share,
        desc=f"video {i}/{n}" if n > 1 else "video",
        unit="frame",
        position=0,
        disable=args.quiet,
        dynamic_ncols=True,
    )
    bar = _Bar(args.quiet, position=1, leave=False)
    encode: list = []

    def on_frame(p) -> None:
        bar.close()
        if p.status == "encoded":
            if not encode:
                encode.append(
                    tqdm(
                        total=p.total,
                        desc="encode",
                        unit="frame",
                        position=0,
                        disable=args.quiet,
                        dynamic_ncols=True,
                    )
                )
            encode[0].update(p.done - encode[0].n)
        elif p.status != "warmup":
            overall.update(p.done - overall.n)
        bar.desc = f"frame {p.frame + 1}"

    try:
        r = run_video(
            plan, styles, options, model=model, device=device, on_frame=on_frame, callback=bar
        )
    finally:
        bar.close()
        overall.close()
        for b in encode:
            b.close()
    made = f"{r.stylised} frames stylised, {r.cached} from the cache"
    if r.output is None:
        print(
            f"{made}; {r.missing} of {r.frames} frames still to be made by the other shards "
            f"(the run that completes them writes {args.output}; cache {r.cache})"
        )
        return 0
    print(
        f"{made} -> {r.output} ({r.frames} frames, {float(r.fps):g} fps, "
        f"{r.size[0]}x{r.size[1]}; audio: {r.audio})"
    )
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from artgen.images import read_params
    from artgen.style import reproduce_command, validate_params
    from artgen.video import OUTPUT_FORMATS

    if os.path.splitext(args.image)[1].lower() in OUTPUT_FORMATS:  # a video artgen wrote
        from artgen.video import read_video_params

        return _info_video(args, read_video_params(args.image))
    params = read_params(args.image)
    if isinstance(params, dict) and isinstance(params.get("video"), dict):  # a video's frame
        return _info_video(args, params)
    if args.json:
        print(json.dumps(params, indent=2, sort_keys=True))
        return 0
    if isinstance(params, dict) and params.get("method") in ("sample",):
        print(f"{args.image}: samples from {clip(params.get('run'))} (artgen sample)")
        return 0
    try:
        method, options = validate_params(params)
    except ArtgenError as e:
        raise ArtgenError(f"{args.image}: metadata that artgen cannot use: {e}") from None
    # Fields are printable (validate_params refuses control characters) and clipped.
    print(f"{args.image}: made by artgen {clip(params.get('artgen'), 20)} ({method.name})")
    c = params["content"]
    print(f"  content: {clip(c['file'])}  sha256 {clip(c['sha256'], 16)}...")
    for s in params["styles"]:
        name = f" (catalogue style {clip(s['name'], 80)})" if s.get("name") else ""
        print(
            f"  style:   {clip(s['file'])}{name}  weight {s['weight']:g}  "
            f"sha256 {clip(s['sha256'], 16)}..."
        )
        if "mask" in s:
            m = s["mask"]
            print(f"    mask:  {clip(m['file'])}  sha256 {clip(m['sha256'], 16)}...")
    if "content_mask" in params:
        m = params["content_mask"]
        print(
            f"  content mask (kept unstylised): {clip(m['file'])}  "
            f"sha256 {clip(m['sha256'], 16)}..."
        )
    print(f"  device:  {params.get('device')}")
    print("  options:")
    for k, v in options.to_dict().items():
        print(f"    {k}: {clip(v)}")
    print("reproduce with:")
    print("  " + reproduce_command(params))
    return 0


def _info_video(args: argparse.Namespace, params: dict) -> int:
    from artgen.video import describe_video_params, video_command

    if args.json:
        print(json.dumps(params, indent=2, sort_keys=True))
        return 0
    try:
        lines = describe_video_params(params)
        command = video_command(params)
    except ArtgenError as e:
        raise ArtgenError(f"{args.image}: metadata that artgen cannot use: {e}") from None
    print(f"{args.image}: made by artgen {clip(params.get('artgen'), 20)} (video)")
    print("\n".join(lines))
    print("reproduce with:")
    print("  " + command)
    return 0


def _cmd_weights(args: argparse.Namespace) -> int:
    from artgen import weights

    if args.action == "list":
        vgg = weights.find_vgg19()
        where = ", ".join(str(p) for p in weights.vgg19_candidates())
        print(
            f"vgg19: {'found at ' + str(vgg) if vgg else 'not on disk (looked in ' + where + ')'}"
        )
        try:
            print(f"efficientnet-lite0: {weights.efficientnet_lite0_path()}")
        except ArtgenError as e:
            print(f"efficientnet-lite0: {e}")
        shipped = weights.ADAIN_SHIPPED / "decoder.safetensors"
        print(
            f"adain shipped (efficientnet-lite0 decoder): "
            f"{shipped if shipped.is_file() else 'missing from this installation'}"
        )
        vgg_dir = weights.adain_vgg_dir()
        have = all((vgg_dir / n).is_file() for n in weights.ADAIN_FILES)
        print(
            f"adain vgg19 (published pair): {vgg_dir if have else 'not on disk (looked in ' + str(vgg_dir) + '; `artgen weights fetch adain`)'}"
        )
        return 0
    if args.name == "adain":
        path = weights.fetch_adain(callback=_download_bar())
        print(
            f"AdaIN VGG encoder and decoder in {path}; use them with --method adain --model vgg19"
        )
        return 0
    path = weights.fetch_vgg19(callback=_download_bar())
    print(f"vgg19 weights at {path}")
    return 0


def _download_bar():
    from tqdm.auto import tqdm

    state: dict = {}

    def cb(p) -> None:
        bar = state.get(p.name)
        if bar is None:
            bar = state[p.name] = tqdm(total=p.total, desc=p.name, unit="B", unit_scale=True)
        bar.update(p.done - bar.n)
        if p.total and p.done >= p.total:
            bar.close()

    return cb


def _cmd_app(args: argparse.Namespace) -> int:
    """The studio (artgen/cli/studio.py, an interface like this one: the library never
    imports gradio). Part of the package, so an installed artgen has it too."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ArtgenError(
            "the studio needs gradio: pip install 'artgen[app]' (make install does this)"
        ) from None
    from artgen.cli import studio

    return studio.main(args.app_args)


def _quiet_libraries() -> None:
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


def _run_training(train, options, bar: _StepBar, command: str):
    """Run a trainer with its progress bar; Ctrl-C prints how to continue (exit 130)."""
    from artgen.errors import Cancelled

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
    from artgen.finetune.diffusion import (
        DiffusionFinetuneOptions,
        finetune_diffusion,
        options_for_resume,
    )

    _quiet_libraries()
    options = _training_options(args, DiffusionFinetuneOptions, options_for_resume)
    bar = _StepBar(args.quiet, "finetune", lambda p: f"loss {p.loss:.4f} lr {p.lr:.2e}")
    run = _run_training(finetune_diffusion, options, bar, "finetune diffusion")
    if run is None:
        return 130
    if os.environ.get("RANK", "0") == "0":  # one line, also under accelerate/torchrun
        print(f"done: {run} (model card {run / 'README.md'}, samples {run / 'samples'})")
    return 0


class _StepBar:
    """A tqdm bar for training runs, fed by their progress callback."""

    def __init__(self, quiet: bool, desc: str, postfix):
        self.quiet, self.desc, self.postfix = quiet, desc, postfix
        self.bar = None
        self.step = 0

    def __call__(self, p) -> None:
        from tqdm.auto import tqdm

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


def _cmd_gan(args: argparse.Namespace, what: str) -> int:

    from artgen.finetune.gan import (
        GanFinetuneOptions,
        GanTrainOptions,
        finetune_gan,
        options_for_resume,
        train_gan,
    )

    cls = GanFinetuneOptions if what == "finetune" else GanTrainOptions
    options = _training_options(args, cls, options_for_resume)
    bar = _StepBar(args.quiet, f"{what} gan", lambda p: f"G {p.loss_g:.3f} D {p.loss_d:.3f}")
    train = finetune_gan if what == "finetune" else train_gan
    run = _run_training(train, options, bar, f"{what} gan")
    if run is None:
        return 130
    if os.environ.get("RANK", "0") == "0":
        print(f"done: {run} (model card {run / 'README.md'}, samples {run / 'samples'})")
    return 0


def _cmd_train_adain(args: argparse.Namespace) -> int:
    from artgen.finetune.adain import AdaINTrainOptions, options_for_resume, train_adain

    options = _training_options(args, AdaINTrainOptions, options_for_resume)
    bar = _StepBar(
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


def _cmd_export(args: argparse.Namespace) -> int:
    from artgen.finetune.diffusion import export_lora

    path = export_lora(args.run, args.output)
    print(f"kohya-style LoRA: {path} (ComfyUI: models/loras/; A1111: models/Lora/)")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from artgen.convert import convert_stylegan2_pickle

    written = convert_stylegan2_pickle(args.pickle, args.out)
    for name, path in written.items():
        print(f"{name}: {path}")
    print(f"use it as a base: artgen finetune gan --base {args.out} --images DIR --out RUN")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    from artgen import __version__
    from artgen.images import check_output, check_output_dir, grid, save_png
    from artgen.runs import load_run, run_class, sample_setting_names

    _quiet_libraries()
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
    from artgen.evaluate import EvalOptions, evaluate
    from artgen.metric_registry import format_result

    _quiet_libraries()
    r = evaluate(args.run, _options(args, EvalOptions))
    if args.json:
        print(json.dumps(r, indent=2, sort_keys=True))
        return 0
    against = ""
    if "reference" in r:
        against = f" against {r['reference']['count']} in {r['reference']['folder']}"
    print(f"{args.run}: {r['samples']['source']} images{against}")
    for line in format_result(r):  # each metric prints itself (artgen.metric_registry)
        print(line)
    print(f"written to {args.run}/eval.json")
    return 0


def _cmd_styles(args: argparse.Namespace) -> int:
    from artgen import catalog

    entries = catalog.load_manifest()
    if args.action == "list":
        for kind, heading in (
            ("bundled", "bundled styles"),
            ("fetchable", "paintings to fetch (public domain)"),
            ("example", "example content"),
        ):
            print(f"{heading}:")
            for e in entries:
                if e.kind != kind:
                    continue
                state = (
                    ""
                    if kind != "fetchable"
                    else (" [downloaded]" if e.available else " [not downloaded]")
                )
                year = f", {e.year}" if e.year else ""
                print(f"  {e.name:16s} {e.title} ({e.author}{year}; {e.licence}){state}")
        return 0
    names = args.names or [e.name for e in entries if e.kind == "fetchable"]
    failed = 0
    for name in names:
        try:
            print(f"{name}: {catalog.fetch(name, callback=_download_bar())}")
        except ArtgenError as e:
            print(f"artgen: error: {clip(e, MESSAGE_LIMIT)}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0  # as `weights fetch`: an ArtgenError is exit 2


__all__ = ["main", "build_parser"]
