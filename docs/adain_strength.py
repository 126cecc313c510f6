"""The fast method's strength above 1 (extrapolated features), or another of its knobs,
measured on the held-out pairs.

    python docs/adain_strength.py --heldout HELDOUT --json docs/adain_strength.json
    python docs/adain_strength.py --heldout HELDOUT --knob style_scale --values 1,1.5,2 \
        --json docs/adain_style_scale.json

For each of the 54 pairs at 384 px the shipped network stylises the photo with the
defaults, the knob at each value (strength: 1, 1.25, 1.5 and 2), and docs/adain_eval.py's
judges score each picture; the JSON holds every pair, the means with 95% intervals, and
the differences to the first value (the default, 1) paired over the pairs, which
docs/adain.md quotes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import adain_eval as E  # noqa: E402

STRENGTHS = (1.0, 1.25, 1.5, 2.0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--model", default="shipped", help="the network (shipped, or a run)")
    ap.add_argument("--knob", default="strength", choices=("strength", "style_scale"))
    ap.add_argument("--values", default=",".join(map(str, STRENGTHS)), help="the first: default")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    values = tuple(float(v) for v in args.values.split(","))
    import artgen
    from artgen.core.images import load_image, resize_long_side

    torch.set_num_threads(2)
    photos, styles = E.held_out(Path(args.heldout))
    judge, net = E.Judge(), artgen.get_method("adain").load(weights=args.model).eval()
    rows: dict[float, list[dict]] = {v: [] for v in values}
    for pn, pp in photos.items():
        photo = resize_long_side(load_image(pp).rgb, args.size)
        for sn, sp in styles.items():
            style = resize_long_side(load_image(sp).rgb, args.size)
            for v in values:
                out = artgen.stylize(
                    photo, style, method="adain", model=net, size=args.size, **{args.knob: v}
                ).convert("RGB")
                rows[v].append({"photo": pn, "style": sn, **judge.all(out, photo, style, pn, sn)})
        print(pn, flush=True)
    doc: dict = {"size": args.size, "model": args.model, "date": time.strftime("%Y-%m-%d")}
    doc["knob"] = args.knob
    doc["pairs"] = {str(s): r for s, r in rows.items()}
    doc["summary"] = {
        str(v): {j: E.summarise([r[j] for r in rows[v]]) for j in E.JUDGES} for v in values
    }
    doc["paired_to_1"] = {}
    for v in values[1:]:
        doc["paired_to_1"][str(v)] = {}
        for j in E.JUDGES:
            d = [b[j] - a[j] for a, b in zip(rows[values[0]], rows[v], strict=True)]
            doc["paired_to_1"][str(v)][j] = {
                "mean": statistics.fmean(d),
                "ci95": E.t975(len(d) - 1) * statistics.stdev(d) / len(d) ** 0.5,
            }
    Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
