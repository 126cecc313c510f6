"""``artgen eval``: measure a fine-tuned generator against a reference image set.

Reports, each labelled with the network that produced it (see artgen.metrics):
- FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) on pretrained features, KID
  with its standard error (bootstrap; see artgen.metrics.kid_from_features);
- intra-cluster LPIPS diversity (Ojha et al. 2021): low means the generator copies
  its few training images;
- with a labels CSV and an attribute: the generated images' attribute proportions,
  as labelled by a linear probe trained on the labelled reference images (see
  artgen.probe, with its cross-validated accuracy), and the Fairness Discrepancy
  (Teo et al. 2023) with a bootstrap interval. By default the
  probe also trains on degraded copies of the references (artgen.probe.degrade: blur,
  noise, colour shifts, down-up sampling, banding, at the samples' resolution), its
  confusion matrix is measured on other degraded copies of held-out references, and the
  proportions are corrected for those errors (artgen.metrics.correct_proportions);
  ``uncorrected`` turns this off.

Departure from Teo et al.: they label samples with a ResNet-18 trained on real images and
report FD uncorrected, without an interval.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from artgen.errors import ArtgenError


@dataclass(frozen=True)
class EvalOptions:
    """``artgen eval RUN_DIR --images DIR``."""

    images: str = field(default="", metadata={"help": "reference images (e.g. the training set)"})
    num_samples: int = field(default=64, metadata={"help": "images to generate and measure"})
    samples: str = field(
        default="", metadata={"help": "measure this folder of images instead of generating"}
    )
    sample_steps: int = field(default=50, metadata={"help": "denoising steps when generating"})
    class_index: int = field(
        default=-1,
        metadata={"help": "GAN runs, class-conditional networks: the class to generate "
                  "(default: the class the run adapted)"},
    )  # fmt: skip
    seed: int = field(default=0, metadata={"help": "seed of the generated images"})
    fid_network: str = field(
        default="efficientnet-lite0",
        metadata={"help": "features for FID/KID", "choices": ["efficientnet-lite0", "vgg19"]},
    )
    lpips: str = field(
        default="auto",
        metadata={"help": "LPIPS network (auto: vgg or alex if on disk, else a stand-in)",
                  "choices": ["auto", "vgg", "alex", "stand-in"]},
    )  # fmt: skip
    clusters: str = field(
        default="",
        metadata={"help": "images the diversity clusters around (default: --images; Ojha et "
                  "al. use the few-shot training set)"},
    )  # fmt: skip
    labels: str = field(default="", metadata={"help": "CSV labelling the reference images"})
    attribute: str = field(default="", metadata={"help": "attribute to measure proportions of"})
    kid_subsets: int = field(default=100, metadata={"help": "KID subsets"})
    # A negative name: bool fields become store_true flags, so the default must be False.
    uncorrected: bool = field(
        default=False,
        metadata={"help": "attribute probe on clean references only, proportions not "
                  "corrected (default: it also trains on degraded copies and its errors on "
                  "degraded held-out references are corrected for)"},
    )  # fmt: skip
    bootstrap: int = field(
        default=1000, metadata={"help": "bootstrap replicates for FD's 95 percent interval"}
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or mps"})


_FEATURES: dict[tuple, Any] = {}
# Degraded copies of the references: fixed seeds, so that every evaluation of a run (and
# of every run against the same set) uses the same calibration.
DEGRADE_SEEDS = (1, 2)  # the copy the probe trains on, the copy its errors are measured on


def _reference_features(
    files: list[Path], net: Any, compute: Callable[[], Any], extra: tuple = ()
) -> Any:
    """``compute()`` (features of the reference images), remembered for the process's next
    evaluations of the same unchanged files with the same network and ``extra`` settings
    (an experiment measures many runs against one set)."""
    key = (net.label, extra, tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size)
                                   for p in files))  # fmt: skip
    if key not in _FEATURES:
        if len(_FEATURES) >= 6:
            _FEATURES.pop(next(iter(_FEATURES)))
        _FEATURES[key] = compute()
    return _FEATURES[key]


def _degraded_features(files: list[Path], res: int, net: Any, image_features: Callable) -> list:
    """Features of the references at the samples' resolution through artgen.probe.degrade,
    one tensor per seed of DEGRADE_SEEDS."""
    from artgen.data import ImageSet
    from artgen.probe import degrade

    data = ImageSet(files, res, center_crop=True, random_flip=False)
    clean = (torch.stack([data[i]["pixels"] for i in range(len(files))]) + 1) / 2
    out = []
    for seed in DEGRADE_SEEDS:
        g = torch.Generator().manual_seed(seed)
        out.append(image_features(degrade(clean.clamp(0, 1), generator=g), net))
    return out


def evaluate(
    run_dir: str | os.PathLike,
    options: EvalOptions,
    *,
    generate: Callable[[int, int], list[Image.Image]] | None = None,
) -> dict[str, Any]:
    """Measure the run and write ``RUN_DIR/eval.json``; returns the same dict.

    ``generate(n, seed)`` makes the images; by default the run is loaded and sampled.
    """
    from artgen.data import ImageSet, check_attribute, list_images, read_labels
    from artgen.devices import resolve_device
    from artgen.finetune.diffusion import SampleOptions, sample_run
    from artgen.finetune.gan import is_gan_run, sample_gan_run
    from artgen.metrics import (
        attribute_proportions,
        fairness_discrepancy_interval,
        fid_from_features,
        image_features,
        intra_cluster_diversity,
        kid_from_features,
        load_fid_network,
        load_lpips,
    )
    from artgen.probe import calibrate_probe, cross_validated_accuracy, fit_linear_probe

    run = Path(run_dir)
    if not options.images:
        raise ArtgenError("--images: give the reference image folder")
    if bool(options.labels) != bool(options.attribute):
        raise ArtgenError("--labels and --attribute go together")
    device = resolve_device(options.device)
    ref_files = list_images(options.images)
    centres = list_images(options.clusters) if options.clusters else ref_files
    labels = read_labels(options.labels, ref_files) if options.labels else None
    if labels is not None:
        check_attribute(labels, options.attribute)

    if options.samples:
        sample_files = list_images(options.samples)
        from artgen.images import load_image

        samples = [load_image(p).rgb for p in sample_files]
        source = str(options.samples)
    else:
        if options.num_samples < 2:
            raise ArtgenError(f"--num-samples {options.num_samples}: need at least 2")
        if generate is None and is_gan_run(run):
            samples = sample_gan_run(run, options.num_samples, seed=options.seed, device=device,
                                     class_index=options.class_index)  # fmt: skip
        elif generate is None:
            so = SampleOptions(n=options.num_samples, steps=options.sample_steps,
                               seed=options.seed)  # fmt: skip
            samples = sample_run(run, so, device=device)
        else:
            samples = generate(options.num_samples, options.seed)
        source = f"{len(samples)} generated (seed {options.seed})"

    if options.bootstrap < 1:
        raise ArtgenError(f"--bootstrap {options.bootstrap}: must be >= 1")
    net = load_fid_network(options.fid_network, device)
    real = _reference_features(ref_files, net, lambda: image_features(ref_files, net))
    fake = image_features(samples, net)
    kid_mean, kid_std = kid_from_features(real, fake, subsets=options.kid_subsets,
                                          seed=options.seed)  # fmt: skip
    subset = min(1000, len(ref_files), len(samples))
    whole = subset >= len(ref_files) and subset >= len(samples)
    result: dict[str, Any] = {
        "run": str(run),
        "reference": {"folder": str(options.images), "count": len(ref_files)},
        "samples": {"source": source, "count": len(samples)},
        "fid": {"value": fid_from_features(real, fake), "network": net.label},
        # std: the spread of a KID estimate on subsets of subset_size (for sets no larger,
        # the bootstrap standard error of the full-set KID that "mean" then is).
        "kid": {"mean": kid_mean, "std": kid_std, "network": net.label,
                "subset_size": subset, "subsets": options.kid_subsets,
                "std_is": "bootstrap standard error" if whole else "std over subsets"},
    }  # fmt: skip

    # Diversity at the samples' own size; references are centre-cropped to match.
    res = samples[0].size[0]
    ref = torch.stack([d["pixels"] for d in ImageSet(centres, res, center_crop=True,
                                                     random_flip=False)])  # fmt: skip
    from artgen.images import to_tensor

    gen = torch.cat([to_tensor(im.resize((res, res))) for im in samples]) * 2 - 1
    distance, label = load_lpips(options.lpips, device)
    with torch.inference_mode():
        # At most 50 members per cluster, as public re-implementations do: a collapsed
        # generator puts most samples in one cluster, and all their pairs would take hours.
        diversity = intra_cluster_diversity(gen.to(device), ref.to(device), distance,
                                            max_per_cluster=50)  # fmt: skip
    result["diversity"] = {"intra_cluster": diversity, "distance": label}

    if labels is not None:
        values = labels.values(options.attribute)
        accuracy, folds = cross_validated_accuracy(real, values)
        calibration = None
        if not options.uncorrected:
            degraded = _reference_features(
                ref_files, net, lambda: _degraded_features(ref_files, res, net, image_features),
                extra=("degraded", res, DEGRADE_SEEDS),
            )  # fmt: skip
            calibration = calibrate_probe(real, degraded[0], degraded[1], values)
            probe = calibration.probe
        else:
            probe = fit_linear_probe(real, values)
        classes = probe.classes
        predicted = [classes.index(p) for p in probe.predict(fake)]
        fd = fairness_discrepancy_interval(
            predicted, len(classes), replicates=options.bootstrap, seed=options.seed,
            calibration=None if calibration is None else (calibration.true, calibration.predicted),
        )  # fmt: skip
        what = f"linear probe on {net.label}"
        if calibration is not None:
            what += (f"; trained with degraded copies, corrected for its errors on degraded "
                     f"held-out references (accuracy there {calibration.accuracy:.2f})")  # fmt: skip
        result["attribute"] = {
            "name": options.attribute,
            "reference_proportions": attribute_proportions(values, classes),
            # Corrected for the probe's errors when calibrated; the probe's own calls are
            # observed_proportions.
            "generated_proportions": dict(zip(classes, fd["proportions"], strict=True)),
            "observed_proportions": dict(zip(classes, fd["observed"], strict=True)),
            "fairness_discrepancy": fd["fd"],
            "fairness_discrepancy_raw": fd["fd_raw"],
            "fairness_discrepancy_interval": [fd["low"], fd["high"]],
            "fairness_discrepancy_std": fd["std"],
            "interval": f"{fd['level']:.0%} percentile bootstrap, {fd['replicates']} replicates"
                        + (" of the samples and the calibration images" if calibration else
                           " of the samples"),
            "corrected": calibration is not None,
            "calibration": None if calibration is None else {
                "images": len(values), "folds": calibration.folds,
                "accuracy": calibration.accuracy,
                "confusion": {t: dict(zip(classes, row, strict=True))
                              for t, row in zip(classes, fd["confusion"], strict=True)},
                "degradations": "artgen.probe.degrade (down-up sampling, blur, colour "
                                f"shifts, banding, noise) at {res} px",
            },
            "classifier": what,
            "classifier_accuracy": accuracy,
            "classifier_folds": folds,
        }  # fmt: skip
    result["options"] = asdict(options)
    if run.is_dir():
        tmp = run / ".eval.json.tmp"
        tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, run / "eval.json")
    return result
