"""``artgen eval``: measure a fine-tuned generator against a reference image set.

``evaluate`` generates (or reads) the samples and computes the metrics asked for
(``EvalOptions.metrics``, e.g. "fid,kid"; by default FID, KID and diversity, and FD when
labels are given), each a function registered in artgen.eval.registry; adding a metric
is one function plus its registration there. The built-in ones report, each labelled with
the network that produced it (see artgen.eval.metrics):
- ``fid``, ``kid``: FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) on pretrained
  features, KID with its standard error (bootstrap; see artgen.eval.metrics.kid_from_features);
- ``diversity``: intra-cluster LPIPS diversity (Ojha et al. 2021): low means the generator
  copies its few training images;
- ``fd`` (eval.json key "attribute"), with a labels CSV and an attribute: the generated
  images' attribute proportions, as labelled by a linear probe trained on the labelled
  reference images (see artgen.eval.probe, with its cross-validated accuracy), and the Fairness
  Discrepancy (Teo et al. 2023) with a bootstrap interval. By default the
  probe also trains on degraded copies of the references (artgen.eval.probe.degrade: blur,
  noise, colour shifts, down-up sampling, banding, at the samples' resolution), its
  confusion matrix is measured on other degraded copies of held-out references, and the
  proportions are corrected for those errors (artgen.eval.metrics.correct_proportions);
  ``uncorrected`` turns this off.

Departure from Teo et al.: they label samples with a ResNet-18 trained on real images and
report FD uncorrected, without an interval.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from artgen.core.errors import ArtgenError
from artgen.core.options import option
from artgen.eval.registry import DEGRADE_SEEDS as DEGRADE_SEEDS  # docs/ scripts import these
from artgen.eval.registry import EvalContext, select_metrics
from artgen.eval.registry import _degraded_features as _degraded_features


@dataclass(frozen=True)
class EvalOptions:
    """``artgen eval RUN_DIR --images DIR``."""

    images: str = option("", "reference images (e.g. the training set)")
    metrics: str = option(
        "",
        "comma-separated metrics to compute, of fid, kid, diversity, fd "
        "and any registered in artgen.eval.registry (default: fid,kid,diversity, "
        "and fd with --labels)",
    )
    num_samples: int = option(64, "images to generate and measure")
    samples: str = option("", "measure this folder of images instead of generating")
    sample_steps: int = option(50, "denoising steps when generating")
    class_index: int = option(
        -1,
        "GAN runs, class-conditional networks: the class to generate "
        "(default: the class the run adapted)",
    )
    seed: int = option(0, "seed of the generated images")
    fid_network: str = option(
        "efficientnet-lite0", "features for FID/KID", choices=["efficientnet-lite0", "vgg19"]
    )
    lpips: str = option(
        "auto",
        "LPIPS network (auto: vgg or alex if on disk, else a stand-in)",
        choices=["auto", "vgg", "alex", "stand-in"],
    )
    clusters: str = option(
        "",
        "images the diversity clusters around (default: --images; Ojha et "
        "al. use the few-shot training set)",
    )
    labels: str = option("", "CSV labelling the reference images")
    attribute: str = option("", "attribute to measure proportions of")
    kid_subsets: int = option(100, "KID subsets")
    # A negative name: bool fields become store_true flags, so the default must be False.
    uncorrected: bool = option(
        False,
        "attribute probe on clean references only, proportions not "
        "corrected (default: it also trains on degraded copies and its errors on "
        "degraded held-out references are corrected for)",
    )
    bootstrap: int = option(1000, "bootstrap replicates for FD's 95 percent interval")
    device: str = option("auto", "auto, cpu, cuda or mps")

    def __post_init__(self) -> None:
        if not isinstance(self.metrics, str):  # a tuple of names: recorded as "fid,kid"
            object.__setattr__(self, "metrics", ",".join(str(m).strip() for m in self.metrics))


def evaluate(
    run_dir: str | os.PathLike,
    options: EvalOptions,
    *,
    generate: Callable[[int, int], list[Image.Image]] | None = None,
) -> dict[str, Any]:
    """Measure the run and write ``RUN_DIR/eval.json``; returns the same dict: "run",
    "reference", "samples", "options" and one entry per metric computed (its key).

    ``generate(n, seed)`` makes the images; by default the run is loaded (artgen.load_run)
    and sampled.
    """
    from artgen.core.data import check_attribute, list_images, read_labels
    from artgen.core.devices import resolve_device

    run = Path(run_dir)
    if bool(options.labels) != bool(options.attribute):
        raise ArtgenError("--labels and --attribute go together")
    metrics = select_metrics(options.metrics, labels=bool(options.labels))
    needs = set().union(*(m.needs for m in metrics))
    if not options.images and (needs & {"reference", "labels"} or options.labels):
        raise ArtgenError("--images: give the reference image folder")
    device = resolve_device(options.device)
    ref_files = list_images(options.images) if options.images else []
    labels = read_labels(options.labels, ref_files) if options.labels else None
    if labels is not None:
        check_attribute(labels, options.attribute)
    for m in metrics:
        if m.check is not None:
            m.check(options)

    if options.samples:
        from artgen.core.images import load_image

        samples = [load_image(p).rgb for p in list_images(options.samples)]
        source = str(options.samples)
    else:
        if options.num_samples < 2:
            raise ArtgenError(f"--num-samples {options.num_samples}: need at least 2")
        if generate is None:
            from artgen.runs.record import load_run

            model = load_run(run, device=device)
            # The settings eval has for each kind: denoising steps, a GAN's class.
            given = {"steps": options.sample_steps, "class_index": options.class_index}
            samples = model.generate(
                options.num_samples,
                seed=options.seed,
                **{k: v for k, v in given.items() if k in model.setting_names()},
            )
        else:
            samples = generate(options.num_samples, options.seed)
        source = f"{len(samples)} generated (seed {options.seed})"

    ctx = EvalContext(options, device, samples, ref_files, labels, run)
    result: dict[str, Any] = {"run": str(run)}
    if options.images:
        result["reference"] = {"folder": str(options.images), "count": len(ref_files)}
    result["samples"] = {"source": source, "count": len(samples)}
    for m in metrics:
        result[m.key] = m.compute(ctx)
    result["options"] = asdict(options)
    if run.is_dir():
        tmp = run / ".eval.json.tmp"
        tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, run / "eval.json")
    return result
