"""`artgen weights`, `artgen styles` and `artgen app`: what artgen needs on disk, and the
studio."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from artgen.cli.common import MESSAGE_LIMIT, download_bar
from artgen.core.errors import ArtgenError, clip

COMMANDS = ("weights", "styles", "app")


def add_commands(sub: argparse._SubParsersAction, method: str) -> None:
    """weights list|fetch, styles list|fetch, app."""
    wp = sub.add_parser("weights", help="list or download backbone weights")
    wsub = wp.add_subparsers(dest="action", metavar="ACTION", required=True)
    wsub.add_parser("list", help="where each backbone's weights are, and whether they are there")
    wf = wsub.add_parser("fetch", help="download weights (needs the internet)")
    wf.add_argument("name", choices=["vgg19", "adain"])
    wp.set_defaults(func=_cmd_weights)

    st = sub.add_parser(
        "styles", help="list the style catalogue or download public-domain paintings"
    )
    ssub = st.add_subparsers(dest="action", metavar="ACTION", required=True)
    ssub.add_parser("list", help="bundled styles and fetchable paintings")
    sf = ssub.add_parser("fetch", help="download paintings (needs the internet)")
    sf.add_argument("names", nargs="*", help="names from `artgen styles list` (default: all)")
    st.set_defaults(func=_cmd_styles)

    # `artgen app ...` is handed to the studio before parsing (artgen.cli.main); this entry
    # is for `artgen --help`.
    ap = sub.add_parser(
        "app", help="serve the artgen studio (a Gradio page) in your browser", add_help=False
    )
    ap.add_argument("app_args", nargs=argparse.REMAINDER, help="see `artgen app --help`")
    ap.set_defaults(func=lambda a: run_app(a.app_args))


def run_app(app_args: Sequence[str]) -> int:
    """The studio (artgen/cli/studio.py, an interface like this one: the library never
    imports gradio). Part of the package, so an installed artgen has it too."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ArtgenError(
            "the studio needs gradio: pip install 'artgen[app]' (make install does this)"
        ) from None
    from artgen.cli import studio

    return studio.main(list(app_args))


def _cmd_weights(args: argparse.Namespace) -> int:
    from artgen.interop import weights

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
        path = weights.fetch_adain(callback=download_bar())
        print(
            f"AdaIN VGG encoder and decoder in {path}; use them with --method adain --model vgg19"
        )
        return 0
    path = weights.fetch_vgg19(callback=download_bar())
    print(f"vgg19 weights at {path}")
    return 0


def _cmd_styles(args: argparse.Namespace) -> int:
    from artgen.interop import catalog

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
            print(f"{name}: {catalog.fetch(name, callback=download_bar())}")
        except ArtgenError as e:
            print(f"artgen: error: {clip(e, MESSAGE_LIMIT)}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0  # as `weights fetch`: an ArtgenError is exit 2
