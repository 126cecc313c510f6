"""The metrics ``artgen eval`` computes, by name: ``artgen eval RUN --metrics fid,kid,fd``.

A metric is one function of an :class:`EvalContext` returning a JSON-able value (written
to eval.json under the metric's ``key``), plus its registration::

    @register_metric("sharpness", needs=("samples",), help="mean Laplacian variance")
    def sharpness(ctx):
        return {"value": float(...), "of": len(ctx.samples)}

``needs``: what it uses, of "samples" (the generated images), "reference" (the --images
set) and "labels" (--labels and --attribute); eval asks for what a requested metric needs
and refuses a request it cannot meet. ``format(value)`` gives the lines ``artgen eval``
prints (default: one line with the value). ``default=True``: computed when --metrics is
not given (one that needs labels, only when they are given). ``check(options)`` runs
before any image is generated, for settings the metric alone uses.

The context computes what metrics share (the feature network, the reference and sample
features) once, and only when a metric asks for it: ``--metrics diversity`` never loads
the FID network. The maths is in artgen.eval.metrics; this module only wires it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from artgen.core.errors import ArtgenError

NEEDS = ("samples", "reference", "labels")
# Keys of eval.json that are not metrics.
RESERVED = ("run", "reference", "samples", "options")


@dataclass(frozen=True)
class Metric:
    name: str
    compute: Callable[[EvalContext], Any]
    needs: frozenset[str]
    key: str
    format: Callable[[Any], Sequence[str]] | None = None
    default: bool = False
    help: str = ""
    check: Callable[[Any], None] | None = None

    def lines(self, value: Any) -> list[str]:
        """What ``artgen eval`` prints for ``value``."""
        if self.format is not None:
            out = self.format(value)
            return [out] if isinstance(out, str) else list(out)
        return [_default_line(self.name, value)]


# name -> Metric, in the order ``artgen eval`` prints them by default.
METRICS: dict[str, Metric] = {}


def register_metric(
    name: str,
    compute: Callable[[EvalContext], Any] | None = None,
    *,
    needs: Collection[str] = ("samples", "reference"),
    key: str = "",
    format: Callable[[Any], Sequence[str]] | None = None,
    default: bool = False,
    help: str = "",
    check: Callable[[Any], None] | None = None,
) -> Any:
    """Register ``compute`` under ``name`` (usable as a decorator); returns ``compute``."""

    def add(fn: Callable[[EvalContext], Any]) -> Callable[[EvalContext], Any]:
        k = key or name
        wrong = sorted(set(needs) - set(NEEDS))
        if wrong:
            raise ValueError(f"metric {name!r}: unknown needs {wrong} (known: {NEEDS})")
        if not name or "," in name or name != name.strip().lower():
            raise ValueError(f"metric name {name!r}: lower case, no commas or spaces")
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        if k in RESERVED or any(m.key == k for m in METRICS.values()):
            raise ValueError(f"metric {name!r}: result key {k!r} is taken")
        METRICS[name] = Metric(name, fn, frozenset(needs), k, format, default, help, check)
        return fn

    return add if compute is None else add(compute)


def metric_names() -> list[str]:
    return list(METRICS)


def parse_metrics(spec: str | Sequence[str]) -> list[str]:
    """The metric names in ``spec`` ("fid,kid" or ("fid", "kid")), checked, each once."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    names = list(dict.fromkeys(str(p).strip().lower() for p in parts if str(p).strip()))
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ArtgenError(
            f"--metrics {','.join(unknown)[:80]}: unknown metric (known: {', '.join(METRICS)})"
        )
    return names


def select_metrics(spec: str | Sequence[str], *, labels: bool) -> list[Metric]:
    """The metrics to compute: those named in ``spec``, or the default set when it names
    none. ``labels``: whether --labels and --attribute were given."""
    names = parse_metrics(spec)
    if not names:
        return [m for m in METRICS.values() if m.default and (labels or "labels" not in m.needs)]
    chosen = [METRICS[n] for n in names]
    for m in chosen:
        if "labels" in m.needs and not labels:
            raise ArtgenError(f"--metrics {m.name}: needs --labels CSV and --attribute NAME")
    return chosen


def format_result(result: Mapping[str, Any]) -> list[str]:
    """The lines ``artgen eval`` prints for the metrics in ``result``, in its order."""
    by_key = {m.key: m for m in METRICS.values()}
    lines: list[str] = []
    for k, value in result.items():
        if k in by_key:
            lines += by_key[k].lines(value)
    return lines


def _default_line(name: str, value: Any) -> str:
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    if number(value):
        return f"  {name:<10} {value:10.4f}"
    if isinstance(value, Mapping) and number(value.get("value")):
        rest = ", ".join(f"{k} {v}" for k, v in value.items() if k != "value")
        return f"  {name:<10} {value['value']:10.4f}" + (f"   ({rest[:200]})" if rest else "")
    return f"  {name:<10} {json.dumps(value, sort_keys=True, default=str)[:200]}"


# -- what the metrics share ---------------------------------------------------------------

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
    key = (
        net.label,
        extra,
        tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in files),
    )
    if key not in _FEATURES:
        if len(_FEATURES) >= 6:
            _FEATURES.pop(next(iter(_FEATURES)))
        _FEATURES[key] = compute()
    return _FEATURES[key]


def _degraded_features(files: list[Path], res: int, net: Any, image_features: Callable) -> list:
    """Features of the references at the samples' resolution through artgen.eval.probe.degrade,
    one tensor per seed of DEGRADE_SEEDS."""
    from artgen.core.data import ImageSet
    from artgen.eval.probe import degrade

    data = ImageSet(files, res, center_crop=True, random_flip=False)
    clean = (torch.stack([data[i]["pixels"] for i in range(len(files))]) + 1) / 2
    out = []
    for seed in DEGRADE_SEEDS:
        g = torch.Generator().manual_seed(seed)
        out.append(image_features(degrade(clean.clamp(0, 1), generator=g), net))
    return out


class EvalContext:
    """What a metric computes from: ``options`` (the EvalOptions), ``device``, ``samples``
    (the generated PIL images), ``reference`` (the reference image files), ``labels``
    (their artgen.core.data.Labels, or None) and ``run`` (the run folder). The rest is computed
    on first use and shared by the metrics of one evaluation."""

    def __init__(
        self,
        options: Any,
        device: torch.device,
        samples: list[Image.Image],
        reference: list[Path],
        labels: Any = None,
        run: Path | None = None,
    ):
        self.options = options
        self.device = device
        self.samples = samples
        self.reference = reference
        self.labels = labels
        self.run = run

    @property
    def resolution(self) -> int:
        """The generated images' side (the references are centre-cropped to it)."""
        return self.samples[0].size[0]

    @cached_property
    def net(self) -> Any:
        """The FID/KID feature network (``options.fid_network``); its ``label`` names it."""
        from artgen.eval.metrics import load_fid_network

        return load_fid_network(self.options.fid_network, self.device)

    @cached_property
    def real(self) -> torch.Tensor:
        """The reference images' features (remembered across evaluations)."""
        from artgen.eval.metrics import image_features

        return self.cached(lambda: image_features(self.reference, self.net))

    @cached_property
    def fake(self) -> torch.Tensor:
        """The generated images' features."""
        from artgen.eval.metrics import image_features

        return image_features(self.samples, self.net)

    def cached(self, compute: Callable[[], Any], extra: tuple = ()) -> Any:
        """``compute()``, something of the reference images and the feature network,
        remembered for later evaluations of the same files with the same ``extra``."""
        return _reference_features(self.reference, self.net, compute, extra)


# -- the metrics --------------------------------------------------------------------------


def _fid_lines(v: dict) -> list[str]:
    return [f"  FID        {v['value']:10.3f}   ({v['network']})"]


@register_metric(
    "fid",
    key="fid",
    format=_fid_lines,
    default=True,
    help="Frechet distance of feature Gaussians (Heusel et al. 2017)",
)
def fid(ctx: EvalContext) -> dict:
    from artgen.eval.metrics import fid_from_features

    return {"value": fid_from_features(ctx.real, ctx.fake), "network": ctx.net.label}


def _kid_lines(k: dict) -> list[str]:
    return [
        f"  KID        {k['mean']:10.4f} +- {k['std']:.4f}   ({k.get('std_is', 'std')}, "
        f"subsets of {k.get('subset_size', '?')})"
    ]


@register_metric(
    "kid",
    format=_kid_lines,
    default=True,
    help="kernel inception distance with its error (Binkowski et al. 2018)",
)
def kid(ctx: EvalContext) -> dict:
    from artgen.eval.metrics import kid_from_features

    o = ctx.options
    mean, std = kid_from_features(ctx.real, ctx.fake, subsets=o.kid_subsets, seed=o.seed)
    subset = min(1000, len(ctx.reference), len(ctx.samples))
    whole = subset >= len(ctx.reference) and subset >= len(ctx.samples)
    # std: the spread of a KID estimate on subsets of subset_size (for sets no larger,
    # the bootstrap standard error of the full-set KID that "mean" then is).
    return {
        "mean": mean,
        "std": std,
        "network": ctx.net.label,
        "subset_size": subset,
        "subsets": o.kid_subsets,
        "std_is": "bootstrap standard error" if whole else "std over subsets",
    }


def _check_clusters(options: Any) -> None:
    from artgen.core.data import list_images

    if options.clusters:
        list_images(options.clusters)


def _diversity_lines(d: dict) -> list[str]:
    return [f"  diversity  {d['intra_cluster']:10.4f}   (intra-cluster, {d['distance']})"]


@register_metric(
    "diversity",
    format=_diversity_lines,
    default=True,
    check=_check_clusters,
    help="intra-cluster LPIPS (Ojha et al. 2021): low means copies",
)
def diversity(ctx: EvalContext) -> dict:
    """At the samples' own size; the cluster centres are centre-cropped to match."""
    from artgen.core.data import ImageSet, list_images
    from artgen.core.images import to_tensor
    from artgen.eval.metrics import intra_cluster_diversity, load_lpips

    o, res = ctx.options, ctx.resolution
    centres = list_images(o.clusters) if o.clusters else ctx.reference
    ref = torch.stack(
        [d["pixels"] for d in ImageSet(centres, res, center_crop=True, random_flip=False)]
    )
    gen = torch.cat([to_tensor(im.resize((res, res))) for im in ctx.samples]) * 2 - 1
    distance, label = load_lpips(o.lpips, ctx.device)
    with torch.inference_mode():
        # At most 50 members per cluster, as public re-implementations do: a collapsed
        # generator puts most samples in one cluster, and all their pairs would take hours.
        value = intra_cluster_diversity(
            gen.to(ctx.device), ref.to(ctx.device), distance, max_per_cluster=50
        )
    return {"intra_cluster": value, "distance": label}


def _check_bootstrap(options: Any) -> None:
    if options.bootstrap < 1:
        raise ArtgenError(f"--bootstrap {options.bootstrap}: must be >= 1")


def _fd_lines(a: dict) -> list[str]:
    props = ", ".join(f"{k} {v:.2f}" for k, v in a["generated_proportions"].items())
    obs = ", ".join(f"{k} {v:.2f}" for k, v in a.get("observed_proportions", {}).items())
    ref = ", ".join(f"{k} {v:.2f}" for k, v in a["reference_proportions"].items())
    calls = f"probe's calls {obs}; " if obs else ""
    interval = a.get("fairness_discrepancy_interval")
    extra = ""
    if interval:
        extra = f"   [{interval[0]:.4f}, {interval[1]:.4f}] ({a.get('interval', '')})"
    if "fairness_discrepancy_raw" in a:
        extra += f"; uncorrected {a['fairness_discrepancy_raw']:.4f}"
    return [
        f"  {a['name']}: generated {props} ({calls}reference {ref})",
        f"  FD         {a['fairness_discrepancy']:10.4f}{extra}",
        f"             {a['classifier']}; {a['classifier_folds']}-fold accuracy "
        f"{a['classifier_accuracy']:.2f}",
    ]


@register_metric(
    "fd",
    key="attribute",
    needs=("samples", "reference", "labels"),
    format=_fd_lines,
    default=True,
    check=_check_bootstrap,
    help="attribute proportions and Fairness Discrepancy (Teo et al. 2023)",
)
def fd(ctx: EvalContext) -> dict:
    """The attribute's proportions among the samples, as a linear probe on the feature
    network labels them (see artgen.eval.evaluate), and their Fairness Discrepancy."""
    from artgen.eval.metrics import (
        attribute_proportions,
        fairness_discrepancy_interval,
        image_features,
    )
    from artgen.eval.probe import calibrate_probe, cross_validated_accuracy, fit_linear_probe

    o, net, real, res = ctx.options, ctx.net, ctx.real, ctx.resolution
    values = ctx.labels.values(o.attribute)
    accuracy, folds = cross_validated_accuracy(real, values)
    calibration = None
    if not o.uncorrected:
        degraded = ctx.cached(
            lambda: _degraded_features(ctx.reference, res, net, image_features),
            extra=("degraded", res, DEGRADE_SEEDS),
        )
        calibration = calibrate_probe(real, degraded[0], degraded[1], values)
        probe = calibration.probe
    else:
        probe = fit_linear_probe(real, values)
    classes = probe.classes
    predicted = [classes.index(p) for p in probe.predict(ctx.fake)]
    fd = fairness_discrepancy_interval(
        predicted,
        len(classes),
        replicates=o.bootstrap,
        seed=o.seed,
        calibration=None if calibration is None else (calibration.true, calibration.predicted),
    )
    what = f"linear probe on {net.label}"
    if calibration is not None:
        what += (
            f"; trained with degraded copies, corrected for its errors on degraded "
            f"held-out references (accuracy there {calibration.accuracy:.2f})"
        )
    return {
        "name": o.attribute,
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
        + (" of the samples and the calibration images" if calibration else " of the samples"),
        "corrected": calibration is not None,
        "calibration": None
        if calibration is None
        else {
            "images": len(values),
            "folds": calibration.folds,
            "accuracy": calibration.accuracy,
            "confusion": {
                t: dict(zip(classes, row, strict=True))
                for t, row in zip(classes, fd["confusion"], strict=True)
            },
            "degradations": "artgen.eval.probe.degrade (down-up sampling, blur, colour "
            f"shifts, banding, noise) at {res} px",
        },
        "classifier": what,
        "classifier_accuracy": accuracy,
        "classifier_folds": folds,
    }


__all__ = [
    "DEGRADE_SEEDS",
    "EvalContext",
    "METRICS",
    "Metric",
    "format_result",
    "metric_names",
    "parse_metrics",
    "register_metric",
    "select_metrics",
]
