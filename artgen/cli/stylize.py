"""`artgen stylize`, `batch`, `video` and `info`: pictures from a photo and styles.

Each command's flags for the method come from the method's options dataclass (through
the style registry, artgen.style), so a new method needs nothing here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, NamedTuple

from artgen.cli.common import Bar, options_from, same_file
from artgen.cli.flags import add_dataclass_flags
from artgen.core.errors import ArtgenError, clip

EXAMPLES = """\
examples:
  artgen stylize photo.jpg --style swirls -o out.png
  artgen stylize photo.jpg --style a.jpg:0.7 --style b.jpg:0.3 --size 768 -o out.png
  artgen stylize photo.jpg --style waves --method adain -o fast.png        # under a second
  artgen stylize photo.jpg --style starry-night --preserve-color luminance --strength 2 -o out.png
  artgen stylize photo.jpg --generator runs/my-art --noise 0.6 -o mine.png      # your own model
  artgen batch photos/ --style mosaic -o stylised/ --shard 1/2
  artgen batch photos/ --style mosaic --method adain -o fast/
  artgen video clip.mp4 --style waves --method adain -o styled.mp4
  artgen info out.png
  artgen styles list
  artgen weights fetch vgg19
"""

VIDEO_EXAMPLES = """\
examples:
  artgen video clip.mp4 --style waves --method adain -o styled.mp4          # fast, steady
  artgen video clip.mp4 --style swirls --size 256 --iterations 100 -o slow.mp4   # Gatys
  artgen video frames/ --style mosaic --method adain --fps 30 -o styled/    # folders too
  artgen video clip.mp4 --style waves --method adain --consistency none -o flicker.mp4
  artgen video long.mp4 --style waves --shard 2/4 -o styled.mp4             # one of 4 machines
  artgen video clip.mp4 --style waves --mask sky.png --style mosaic --method adain -o two.mp4
"""


COMMANDS = ("stylize", "batch", "video", "info")


# The main flags of each style method, named in the other methods' --help (importing every
# method's options would import PyTorch for them all; tests check these names exist).
METHOD_FLAGS = {
    "gatys": "--iterations, --backbone, --init, --content-weight, --optimizer",
    "adain": "--model, --palette, --style-scale",
    "sdedit": "--generator, --prompt, --negative-prompt, --controlnet, --steps, --guidance-scale",
}


def add_commands(sub: argparse._SubParsersAction, method: str, only: str | None = None) -> None:
    """stylize, batch, video and info (or ``only`` that one); the first three get the flags of
    ``method``. Batch's and video's options are imported only when their parsers are made:
    `artgen stylize --method adain` then loads no PyTorch until it must."""
    from artgen.style import DEFAULT_METHOD, METHODS, get_method

    style_method = get_method(method if method in METHODS else DEFAULT_METHOD)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--style",
            action="append",
            required=style_method.needs_styles,
            type=_style_arg,
            metavar="STYLE[:WEIGHT]",
            help="style image path or catalogue name (see `artgen styles list`), with an optional "
            "blend weight; repeat to blend several"
            + ("" if style_method.needs_styles else f" (not for {style_method.name})"),
        )
        sp.add_argument(
            "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)"
        )
        sp.add_argument(
            "--weights", help="path to the backbone's weights file (else TORCH_HOME is searched)"
        )
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        # Only this method's module is imported (the others may need more: Gatys imports
        # PyTorch at once), so the help names the others without their summaries.
        sp.add_argument(
            "--method",
            choices=list(METHODS),
            default=style_method.name,
            help=f"style method: {', '.join(METHODS)}. The flags below are "
            f"{style_method.name}'s ({style_method.summary}); `--method NAME --help` lists "
            "another's (default: gatys; sdedit when --generator is given)",
        )
        add_dataclass_flags(sp, style_method.options)
        others = [m for m in METHOD_FLAGS if m != style_method.name]
        sp.add_argument_group(
            "other methods' flags",
            "\n".join(f"  --method {m}: {METHOD_FLAGS[m]}, ..." for m in others)
            + "\n  `--method NAME --help` lists them with their defaults; docs/cli.md, "
            "every method's",
        )

    if only in (None, "stylize"):
        _add_stylize(sub, common)
    if only in (None, "batch"):
        _add_batch(sub, common)
    if only in (None, "video"):
        _add_video(sub, common)
    if only in (None, "info"):
        ip = sub.add_parser("info", help="print the parameters stored in a PNG that artgen wrote")
        ip.add_argument("image")
        ip.add_argument("--json", action="store_true", help="print only the JSON")
        ip.set_defaults(func=_cmd_info)


def _command(sub: argparse._SubParsersAction, name: str, help: str, epilog: str):
    """A command's parser, its examples kept as written."""
    return sub.add_parser(
        name, help=help, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def _add_stylize(sub: argparse._SubParsersAction, common) -> None:
    sp = _command(sub, "stylize", "stylise one image", EXAMPLES)
    sp.add_argument("content", help="content image")
    sp.add_argument("-o", "--output", required=True, help="output PNG")
    sp.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    common(sp)
    _mask_flags(sp)
    sp.set_defaults(func=_cmd_stylize)


def _add_batch(sub: argparse._SubParsersAction, common) -> None:
    from artgen.style.batch import BatchOptions

    bp = _command(sub, "batch", "stylise every image in a folder (resumable)", EXAMPLES)
    bp.add_argument(
        "in_dir", help="folder of content images (with --verify and no -o: the output folder)"
    )
    bp.add_argument(
        "-o",
        "--output",
        help="output folder (NAME.png for each input; the same tree with --recursive)",
    )
    bp.add_argument(
        "--verify",
        action="store_true",
        help="check a finished data-set output folder against its manifest.jsonl (changed or "
        "missing files) instead of stylising: `artgen batch --verify OUT`, or with the run's "
        "own arguments to check also that every image was made, with these settings",
    )
    add_dataclass_flags(bp, BatchOptions)
    common(bp)
    _mask_flags(bp)
    for action in bp._actions:
        if action.dest == "style":  # --style-pool or --verify stand in for it
            action.required = False
        if action.dest == "method":
            action.help = (action.help or "").replace(
                "when --generator is given)", "when --generator is given; adain with --style-pool)"
            )
    bp.set_defaults(func=_cmd_batch)


def _add_video(sub: argparse._SubParsersAction, common) -> None:
    from artgen.video.pipeline import VideoOptions

    vp = _command(
        sub,
        "video",
        "stylise a video or a folder of frames, temporally consistent (resumable)",
        VIDEO_EXAMPLES,
    )
    vp.add_argument("input", help="video file (mp4, mov, mkv, webm, gif, avi) or folder of frames")
    vp.add_argument(
        "-o",
        "--output",
        required=True,
        help="output video (.mp4 .mov .mkv .webm .gif) or folder (one PNG per frame)",
    )
    add_dataclass_flags(vp, VideoOptions)
    common(vp)
    _mask_flags(vp)
    vp.set_defaults(func=_cmd_video)


def peek_method(argv) -> str:
    """The --method of a stylize/batch/video command line (their flags depend on it);
    without one, ``--generator RUN`` means sdedit (a fine-tuned run repaints the photo)."""
    for i, a in enumerate(argv):
        if a == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--method="):
            return a.split("=", 1)[1]
    if any(a == "--generator" or a.startswith("--generator=") for a in argv):
        return "sdedit"
    if argv[:1] == ["batch"] and any(
        a == "--style-pool" or a.startswith("--style-pool=") for a in argv
    ):
        return "adain"  # data sets: the fast method unless --method says otherwise
    return "gatys"


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
    from artgen.core.images import load_mask

    given = getattr(args, "masks", None) or {}
    masks = [load_mask(given[i]) if i in given else None for i in range(len(args.style or []))]
    cmask = getattr(args, "content_mask", None)
    return (masks if given else None), (load_mask(cmask) if cmask else None)


class _Setup(NamedTuple):
    """What a stylising command has loaded before its first picture."""

    method: Any
    options: Any
    model: Any
    device: Any
    styles: list
    masks: Any
    content_mask: Any

    @property
    def keywords(self) -> dict[str, Any]:
        """The keywords of run_batch and run_video that come from the setup."""
        return {
            "model": self.model,
            "device": self.device,
            "masks": self.masks,
            "content_mask": self.content_mask,
        }


def _setup(
    args: argparse.Namespace, masks=None, content_mask=None, onnx: bool = True, many: bool = False
) -> _Setup:
    """The method, its options, the loaded network, the device and the loaded style images.
    The fast method runs on onnxruntime when this run can (artgen.style.adain_onnx): then
    PyTorch is never imported (``many``: for a folder, several pictures at once)."""
    from artgen.core.images import load_image
    from artgen.interop import catalog
    from artgen.style import check_styles, get_method

    method = get_method(args.method)
    check_styles(method, args.style)
    options = options_from(args, method.options)
    styles = [(load_image(catalog.resolve(s)), w) for s, w in args.style or []]
    if method.needs_styles and (sum(w for _, w in styles) <= 0 or any(w < 0 for _, w in styles)):
        raise ArtgenError("style weights must be >= 0 and not all zero")
    if onnx and method.name == "adain" and not args.weights:
        from artgen.style import adain_onnx

        onnx = adain_onnx.usable(options, args.device, styles, masks, content_mask)
        if onnx is not None:
            model = adain_onnx.load(onnx, adain_onnx.batch_workers() if many else 1)
            print(method.describe(model), file=sys.stderr)
            return _Setup(method, options, model, "cpu", styles, masks, content_mask)
    from artgen.core.devices import resolve_device

    device = resolve_device(args.device)
    model = method.load(options, device, args.weights)
    if method.describe is not None:
        print(method.describe(model), file=sys.stderr)
    return _Setup(method, options, model, device, styles, masks, content_mask)


def _cmd_stylize(args: argparse.Namespace) -> int:
    from artgen.core.images import OutputClaim, check_output, load_image, save_png
    from artgen.interop import catalog
    from artgen.style import check_styles, get_method, run_params

    check_styles(get_method(args.method), args.style)  # before any work
    out = args.output
    if not out.lower().endswith(".png"):
        raise ArtgenError(f"{out}: output must be a .png file (it carries the parameters)")
    inputs = [
        args.content,
        *[str(catalog.resolve(s)) for s, _ in args.style or []],
        *(args.masks or {}).values(),
        *([args.content_mask] if args.content_mask else []),
    ]
    if any(same_file(out, i) for i in inputs):
        raise ArtgenError(f"{out}: is one of the inputs; artgen never overwrites an input")
    check_output(out, overwrite=args.overwrite)  # before any compute
    content = load_image(args.content)
    masks, content_mask = _load_masks(args)
    from artgen.style import check_masks, get_method, mask_arguments

    extra = mask_arguments(get_method(args.method), masks, content_mask)
    check_masks(content.size, masks, content_mask)  # before the model loads
    method, options, model, device, styles, _, _ = _setup(args, masks, content_mask)
    bar = Bar(args.quiet)
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
    from tqdm import tqdm  # the terminal bar (tqdm.auto also imports asyncio)

    from artgen.style import check_styles, get_method
    from artgen.style.batch import BatchOptions, plan_batch, run_batch

    if args.verify:
        return _cmd_verify(args)
    if args.output is None:
        raise ArtgenError("batch: -o/--output is needed (the output folder)")
    batch = options_from(args, BatchOptions)
    if batch.dataset:
        return _cmd_dataset(args, batch)
    check_styles(get_method(args.method), args.style)  # before any work
    jobs = plan_batch(args.in_dir, args.output, batch)
    i, n = batch.shard_numbers()
    if not jobs:
        print(f"no images to do in {args.in_dir} (shard {i}/{n})")
        return 0
    from artgen.core.images import check_output_dir
    from artgen.interop import catalog

    if any(same_file(j.output, catalog.resolve(s)) for j in jobs for s, _ in args.style or []):
        raise ArtgenError("an output would overwrite a style image; choose another output folder")
    mask_files = [*(args.masks or {}).values(), *([args.content_mask] if args.content_mask else [])]
    if any(same_file(j.output, m) for j in jobs for m in mask_files):
        raise ArtgenError("an output would overwrite a mask; choose another output folder")
    check_output_dir(args.output)  # before any compute
    masks, content_mask = _load_masks(args)
    from artgen.style import get_method, mask_arguments

    mask_arguments(get_method(args.method), masks, content_mask)  # refused before any work
    setup = _setup(args, masks, content_mask, many=len(jobs) > 1)
    overall = tqdm(
        total=len(jobs), desc=f"batch {i}/{n}", unit="img", position=0, disable=args.quiet
    )
    bar = Bar(args.quiet, position=1, leave=False)

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
            setup.styles,
            setup.options,
            batch,
            on_image=on_image,
            on_result=on_result,
            callback=bar,
            **setup.keywords,
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


def _dataset_setup(args: argparse.Namespace, batch, all_shards: bool = False):
    """(plan, config) of a data-set run from its arguments: refused in one line before any
    network is loaded when the tree, the pool, the styles or the masks do not fit."""
    from artgen.interop import catalog
    from artgen.style import check_styles, get_method
    from artgen.style.batch import dataset_config, plan_dataset

    method = get_method(args.method)
    if batch.style_pool and args.style:
        raise ArtgenError("give --style or --style-pool, not both")
    if not batch.style_pool:
        if method.needs_styles and not args.style:
            raise ArtgenError(
                f"method {method.name} needs a style image: --style (one for every image) "
                "or --style-pool (one drawn per image)"
            )
        check_styles(method, args.style)
    options = options_from(args, method.options)
    plan = plan_dataset(args.in_dir, args.output, batch, seed=options.seed, all_shards=all_shards)
    styles = [(catalog.resolve(s), w) for s, w in args.style or []]
    if (
        method.needs_styles
        and styles
        and (sum(w for _, w in styles) <= 0 or any(w < 0 for _, w in styles))
    ):
        raise ArtgenError("style weights must be >= 0 and not all zero")
    protected = {
        os.path.realpath(p)
        for p in [
            *(p for p, _ in styles),
            *(args.masks or {}).values(),
            *([args.content_mask] if args.content_mask else []),
        ]
    }
    for item in plan.items:
        if os.path.realpath(item.output) in protected:
            raise ArtgenError(
                f"{item.output}: is a style or mask image; choose another output folder"
            )
    masks, content_mask = _load_masks(args)
    if not args.verify:
        from artgen.core.images import check_output_dir

        check_output_dir(plan.out_dir)  # before any compute
    config = dataset_config(
        plan,
        batch,
        options,
        styles,
        device=args.device,
        weights=args.weights,
        masks=masks,
        content_mask=content_mask,
    )
    return plan, config


def _cmd_dataset(args: argparse.Namespace, batch) -> int:
    """`artgen batch` in data-set mode: a tree, a style pool, variants, a manifest."""
    from tqdm import tqdm  # the terminal bar (tqdm.auto also imports asyncio)

    plan, config = _dataset_setup(args, batch)
    i, n = plan.shard
    skipped = f"; {plan.non_images} other files skipped" if plan.non_images else ""
    if plan.subfolders:
        skipped += f"; {plan.subfolders} sub-folders left out (--recursive takes them)"
    pool = f", styles drawn from {plan.pool} ({plan.pool_size})" if plan.pool else ""
    print(
        f"{plan.images} images in {plan.in_dir}{skipped}{pool}; "
        f"{len(plan.items)} outputs for shard {i}/{n}, engine {batch.engine}",
        file=sys.stderr,
    )
    if not plan.items:
        print(f"no images to do in {args.in_dir} (shard {i}/{n})")
        return 0
    overall = tqdm(total=len(plan.items), desc=f"batch {i}/{n}", unit="img", disable=args.quiet)

    def on_result(r) -> None:
        if r.status == "failed" and not args.quiet:
            overall.write(f"failed: {r.note}")
        overall.update(1)

    try:
        if batch.engine == "ray":
            from artgen.style.batch_ray import run_dataset_ray

            results = run_dataset_ray(
                plan,
                config,
                address=batch.address,
                workers=batch.workers,
                num_gpus_per_worker=batch.num_gpus_per_worker,
                batch_size=batch.batch_size,
                on_result=on_result,
            )
        else:
            from artgen.style import get_method
            from artgen.style.batch import load_network, run_dataset

            model, device = load_network(
                config.method,
                config.options,
                config.device,
                config.weights,
                n_styles=max(1, len(config.styles)),
                masks=config.masks,
                content_mask=config.content_mask,
                threads=config.threads,
            )
            method = get_method(config.method)
            if method.describe is not None:
                overall.write(method.describe(model), file=sys.stderr)
            bar = Bar(args.quiet, position=1, leave=False)
            try:
                results = run_dataset(
                    plan, config, model=model, device=device, on_result=on_result, callback=bar
                )
            finally:
                bar.close()
    finally:
        overall.close()
    done = sum(r.status == "done" for r in results)
    skipped_n = sum(r.status == "skipped" for r in results)
    found = sum(
        r.status == "skipped" and r.note == "found whole, added to the manifest" for r in results
    )
    by_other = sum(r.note == "another artgen run is making it" for r in results)
    failed = [r for r in results if r.status == "failed"]
    notes = [f"{found} found whole and recorded"] if found else []
    notes += [f"{by_other} by another run"] if by_other else []
    print(
        f"{done} stylised, {skipped_n} already done (skipped"
        + ("; " + "; ".join(notes) if notes else "")
        + f"), {len(failed)} failed -> {args.output} (manifest {plan.manifest})"
    )
    reasons: dict[str, int] = {}
    for r in failed:
        reasons[r.note or "?"] = reasons.get(r.note or "?", 0) + 1
    for note, count in reasons.items():
        print(f"  failed{f' ({count} images)' if count > 1 else ''}: {note}")
    return 1 if failed else 0


def _cmd_verify(args: argparse.Namespace) -> int:
    """`artgen batch --verify OUT` (the manifest alone) or `artgen batch IN -o OUT --verify
    ...` (also: every image of the run made with these settings, inputs unchanged)."""
    from artgen.style.batch import BatchOptions, verify_dataset

    if args.output is None:
        report = verify_dataset(args.in_dir)
        out = args.in_dir
    else:
        batch = options_from(args, BatchOptions)
        plan, config = _dataset_setup(args, batch, all_shards=True)
        report = verify_dataset(args.output, plan, config)
        out = args.output
    for line in report.problems():
        print(f"  {line}")
    print(f"{out}: {report.verdict()}")
    return 0 if report.ok else 1


def _cmd_video(args: argparse.Namespace) -> int:
    from tqdm import tqdm  # the terminal bar (tqdm.auto also imports asyncio)

    from artgen.interop import catalog
    from artgen.style import get_method
    from artgen.video.pipeline import VideoOptions, plan_video, run_video

    if not get_method(args.method).needs_styles:
        raise ArtgenError(
            f"--method {args.method}: not for videos (each frame would be repainted on its "
            "own, and flicker); use stylize or batch on the frames"
        )
    video = options_from(args, VideoOptions)
    masks, content_mask = _load_masks(args)
    from artgen.style import mask_arguments

    mask_arguments(get_method(args.method), masks, content_mask)  # refused before any work
    plan = plan_video(
        args.input,
        args.output,
        options_from(args, get_method(args.method).options),
        video,
        masks,
        content_mask,
        upscale="size" in vars(args),  # a small clip keeps its size unless --size asks
    )
    for s, _ in args.style:
        style = str(catalog.resolve(s))
        if same_file(style, args.output) or (
            plan.kind == "folder" and same_file(os.path.dirname(style), plan.cache)
        ):
            raise ArtgenError(f"{args.output}: would overwrite the style image {style}")
    mask_files = [*(args.masks or {}).values(), *([args.content_mask] if args.content_mask else [])]
    for m in mask_files:
        if same_file(m, args.output) or (
            plan.kind == "folder" and same_file(os.path.dirname(os.path.abspath(m)), plan.cache)
        ):
            raise ArtgenError(f"{args.output}: would overwrite the mask {m}")
    # video keeps PyTorch: its temporal blending and flow run there
    setup = _setup(args, masks, content_mask, onnx=False)
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
    bar = Bar(args.quiet, position=1, leave=False)
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
            plan, setup.styles, setup.options, on_frame=on_frame, callback=bar, **setup.keywords
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
            + (f"; {r.note}" if r.note else "")
        )
        return 0
    print(
        f"{made} -> {r.output} ({r.frames} frames, {float(r.fps):g} fps, "
        f"{r.size[0]}x{r.size[1]}; audio: {r.audio})" + (f"; {r.note}" if r.note else "")
    )
    return 0


def _short_hash(value: str) -> str:
    """The first 16 characters of a recorded sha256, then one ellipsis (clip's own, added
    when it cuts, once came out as a double ellipsis)."""
    text = clip(value, 80)
    return text if len(text) <= 16 else text[:16] + "..."


def _cmd_info(args: argparse.Namespace) -> int:
    from artgen.core.images import read_params
    from artgen.style import reproduce_command, validate_params
    from artgen.video.pipeline import OUTPUT_FORMATS

    if os.path.splitext(args.image)[1].lower() in OUTPUT_FORMATS:  # a video artgen wrote
        from artgen.video.pipeline import read_video_params

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
    print(f"  content: {clip(c['file'])}  sha256 {_short_hash(c['sha256'])}")
    for s in params["styles"]:
        name = f" (catalogue style {clip(s['name'], 80)})" if s.get("name") else ""
        print(
            f"  style:   {clip(s['file'])}{name}  weight {s['weight']:g}  "
            f"sha256 {_short_hash(s['sha256'])}"
        )
        if "mask" in s:
            m = s["mask"]
            print(f"    mask:  {clip(m['file'])}  sha256 {_short_hash(m['sha256'])}")
    if "content_mask" in params:
        m = params["content_mask"]
        print(
            f"  content mask (kept unstylised): {clip(m['file'])}  "
            f"sha256 {_short_hash(m['sha256'])}"
        )
    print(f"  device:  {params.get('device')}")
    print("  options:")
    for k, v in options.to_dict().items():
        print(f"    {k}: {clip(v)}")
    print("reproduce with:")
    print("  " + reproduce_command(params))
    return 0


def _info_video(args: argparse.Namespace, params: dict) -> int:
    from artgen.video.pipeline import describe_video_params, video_command

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
