"""Speed of artgen eval's feature network (EfficientNet-Lite0 for FID, KID, the probe).

    python benchmarks/fid_features.py [--threads 1 2] [--images 64] [--rounds 5] [--json F]

Measures images per second of ``artgen.eval.metrics.image_features`` with the network that
``load_fid_network`` builds (BatchNorm folded into the convs, channels_last), next to a
reference in the same run: the same ImageNet classifier as timm lays it out, BatchNorm
kept, contiguous (NCHW) tensors, resized and normalised the same way. The inputs are
16 px images, as the GAN experiment's, so the time is the network's at 224 px. Rounds
alternate between the two and the median is kept (these 2-core machines are noisy); the
largest difference of their features is printed beside the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    from artgen.eval.metrics import _resize, image_features, load_fid_network
    from artgen.interop.weights import choose_backbone, read_state_dict
    from artgen.models import backbones
    from artgen.models.backbones import IMAGENET_MEAN, IMAGENET_STD

    net = load_fid_network("efficientnet-lite0")
    sd = read_state_dict(choose_backbone("efficientnet-lite0", None, instead="").weights, "")
    plain = backbones.efficientnet_lite0_classifier(sd)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def reference(x: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for i in range(0, len(x), 32):
                h = (_resize(x[i : i + 32], (224, 224)) - mean) / std
                out.append(plain.forward_features(h).mean((2, 3)))
        return torch.cat(out)

    x = torch.rand(args.images, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        times: dict[str, list[float]] = {"artgen": [], "reference": []}
        fns = {"artgen": lambda: image_features(x, net), "reference": lambda: reference(x)}
        for f in fns.values():
            f()  # warm-up
        for _ in range(args.rounds):
            for name, f in fns.items():
                t = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t)
        a, r = (statistics.median(times[k]) for k in ("artgen", "reference"))
        diff = float((fns["artgen"]() - fns["reference"]()).abs().max())
        row = {
            "threads": threads,
            "artgen_images_per_s": args.images / a,
            "reference_images_per_s": args.images / r,
            "speedup": r / a,
            "max_abs_feature_difference": diff,
        }
        results.append(row)
        print(
            f"{threads} thread(s): artgen {row['artgen_images_per_s']:.1f} images/s, "
            f"reference {row['reference_images_per_s']:.1f} images/s: {row['speedup']:.2f}x "
            f"(features differ by at most {diff:.1e})",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
