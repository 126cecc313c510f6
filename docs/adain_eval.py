"""Held-out quality of the fast method against Gatys, the artist fine-tune, and --init fast.

    python docs/adain_eval.py --shared ../shared/images --artist-run RUN [--size 384]

Writes docs/adain_results.json and docs/images/adain_sheet.png, adain_artist.png.

Held out (no training run saw them): photos chelsea and coffee (styles/examples),
tubingen and golden_gate (shared/images, for checks only); styles mondrian and
woman_in_peasant_dress (shared/images/paintings) and the four bundled styles (seeds the
training data did not use).

Metrics, per (photo, style) pair, all on the output at the same size:
- content loss: ||f(out) - f(photo)||^2 / ||f(photo)||^2 at EfficientNet-Lite0's block2_1
  (the Gatys content layer), lower keeps more of the photo;
- style distance ratio: sum over the five style layers of the distance of channel means
  and stds to the style's, divided by the same for the photo itself (1: no style moved,
  0: the style's statistics exactly);
- edge correlation: Pearson correlation of Sobel gradient magnitudes of the output and
  the photo (greyscale, after a 3 px blur), a judge that uses no network.
The first two are judged by EfficientNet-Lite0, the network both methods here use, so
they favour neither; but it is not an independent judge (no other pretrained network is
available offline). The edge correlation is.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

import artgen
from artgen.images import load_image, to_tensor
from artgen.losses import mean_std, stats_distance

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def pairs(shared: Path):
    photos = {
        "chelsea": ROOT / "styles/examples/chelsea.jpg",
        "coffee": ROOT / "styles/examples/coffee.jpg",
        "tubingen": shared / "tubingen.jpg",
        "golden_gate": shared / "golden_gate.jpg",
    }
    styles = {
        "mondrian": shared / "paintings/mondrian.jpg",
        "red_chalk": shared / "paintings/woman_in_peasant_dress.jpg",
        "swirls": ROOT / "styles/swirls.jpg",
        "mosaic": ROOT / "styles/mosaic.jpg",
        "waves": ROOT / "styles/waves.jpg",
        "facets": ROOT / "styles/facets.jpg",
    }
    return photos, styles


class Judge:
    def __init__(self):
        from artgen.weights import choose_backbone, load_backbone

        self.net = load_backbone(choose_backbone("efficientnet-lite0"))
        self.layers = list(self.net.spec.style_layers)

    def feats(self, img: Image.Image):
        with torch.no_grad():
            return self.net(to_tensor(img.convert("RGB")), {*self.layers, "block2_1"})

    def content_loss(self, out: Image.Image, photo: Image.Image) -> float:
        a, b = self.feats(out)["block2_1"], self.feats(photo.resize(out.size))["block2_1"]
        return float(((a - b) ** 2).sum() / (b**2).sum())

    def style_distance(self, img: Image.Image, style: Image.Image) -> float:
        f, s = self.feats(img), self.feats(style)
        return sum(float(stats_distance(f[n], *mean_std(s[n]))) for n in self.layers)


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


def summarise(rows: list[dict], key: str) -> dict:
    vals = [r[key] for r in rows]
    m = statistics.mean(vals)
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": m, "sd": sd, "n": len(vals), "ci95": 1.96 * sd / len(vals) ** 0.5}


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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "images"))
    ap.add_argument("--artist-run", default="", help="a run of `artgen train adain --base shipped`")
    ap.add_argument("--artist-style", default="red_chalk")
    ap.add_argument(
        "--train-run", default="", help="the shipped decoder's run (for its loss curve)"
    )
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--gatys-iterations", type=int, default=200)
    ap.add_argument("--init-pairs", type=int, default=4, help="pairs for the --init fast check")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.train_run:
        cfg = json.loads((Path(args.train_run) / "config.json").read_text())
        plot_log(
            Path(args.train_run) / "log.jsonl",
            DOCS / "images" / "adain_loss.png",
            cfg["style_weight"],
        )
    photos, styles = pairs(Path(args.shared))
    judge = Judge()
    gatys_model = artgen.get_method("gatys").load(
        artgen.StylizeOptions(backbone="efficientnet-lite0")
    )
    fast = artgen.get_method("adain").load()
    artist = artgen.get_method("adain").load(weights=args.artist_run) if args.artist_run else None
    results: dict = {"size": args.size, "date": time.strftime("%Y-%m-%d"), "pairs": []}
    sheet_rows, artist_rows = [], []
    for pname, ppath in photos.items():
        photo = load_image(ppath).rgb
        for sname, spath in styles.items():
            style = load_image(spath).rgb
            t0 = time.perf_counter()
            g = artgen.stylize(
                photo,
                style,
                model=gatys_model,
                size=args.size,
                iterations=args.gatys_iterations,
                backbone="efficientnet-lite0",
            )
            tg = time.perf_counter() - t0
            t0 = time.perf_counter()
            a = artgen.stylize(photo, style, method="adain", model=fast, size=args.size)
            ta = time.perf_counter() - t0
            d0 = judge.style_distance(photo.resize(a.size), style)
            row = {"photo": pname, "style": sname, "seconds_gatys": tg, "seconds_fast": ta}
            outs = {"gatys": g, "fast": a}
            if artist is not None and sname == args.artist_style:
                outs["fast+artist"] = artgen.stylize(
                    photo, style, method="adain", model=artist, size=args.size
                )
            for k, im in outs.items():
                row[f"{k}_content"] = judge.content_loss(im, photo)
                row[f"{k}_style_ratio"] = judge.style_distance(im, style) / d0
                row[f"{k}_edges"] = edge_correlation(im, photo)
            results["pairs"].append(row)
            print(
                json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
                flush=True,
            )
            if (pname, sname) in {
                ("chelsea", "mondrian"),
                ("tubingen", "swirls"),
                ("golden_gate", args.artist_style),
                ("coffee", "waves"),
            }:
                sheet_rows.append(
                    [
                        ("photo", photo),
                        ("style (held out)", style),
                        ("Gatys", g),
                        ("fast (shipped)", a),
                    ]
                )
            if "fast+artist" in outs:
                artist_rows.append(
                    [
                        ("photo", photo),
                        ("artist's style", style),
                        ("Gatys", g),
                        ("fast (shipped)", a),
                        ("fast + artist fine-tune", outs["fast+artist"]),
                    ]
                )
    rows = results["pairs"]
    summary = {}
    for k in ("gatys", "fast"):
        summary[k] = {m: summarise(rows, f"{k}_{m}") for m in ("content", "style_ratio", "edges")}
    art_rows = [r for r in rows if "fast+artist_content" in r]
    if art_rows:
        summary["artist_style_only"] = {
            k: {m: summarise(art_rows, f"{k}_{m}") for m in ("content", "style_ratio", "edges")}
            for k in ("gatys", "fast", "fast+artist")
        }
    summary["seconds"] = {
        "gatys": summarise(rows, "seconds_gatys"),
        "fast": summarise(rows, "seconds_fast"),
    }
    results["summary"] = summary

    # Does Gatys reach the same loss in fewer steps from the fast picture?
    init_rows = []
    for pname, sname in list(
        zip(photos, ["mondrian", "swirls", "red_chalk", "waves"], strict=False)
    )[: args.init_pairs]:
        photo, style = load_image(photos[pname]).rgb, load_image(styles[sname]).rgb
        curves = {}
        for init in ("content", "fast"):
            losses: list[float] = []
            artgen.stylize(
                photo,
                style,
                model=gatys_model,
                size=args.size,
                init=init,
                iterations=args.gatys_iterations,
                backbone="efficientnet-lite0",
                callback=lambda p, losses=losses: losses.append(p.loss),
            )
            curves[init] = losses
        final = curves["content"][-1]
        last_scale = curves["fast"][-args.gatys_iterations :]
        reach = next((i + 1 for i, v in enumerate(last_scale) if v <= final), None)
        init_rows.append(
            {
                "photo": pname,
                "style": sname,
                "final_content_init": final,
                "final_fast_init": curves["fast"][-1],
                "first_scale_end_content": curves["content"][args.gatys_iterations - 1],
                "first_scale_end_fast": curves["fast"][args.gatys_iterations - 1],
                "fast_reaches_content_final_at_last_scale_step": reach,
            }
        )
        print(json.dumps(init_rows[-1]), flush=True)
    results["init_fast"] = init_rows
    (DOCS / "adain_results.json").write_text(json.dumps(results, indent=1) + "\n")
    sheet(sheet_rows).save(DOCS / "images" / "adain_sheet.png", optimize=True)
    if artist_rows:
        sheet(artist_rows).save(DOCS / "images" / "adain_artist.png", optimize=True)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
