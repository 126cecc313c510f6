"""Fair transfer learning and few-shot GAN adaptation, measured on a 2-core CPU.

    python docs/fairtl_experiment.py [--out out/fairtl] [--scale 1.0] [--bases 2] [--seeds 3]
    python docs/fairtl_experiment.py --quick     # the direction of each effect, 6-13 min on 2 cores
    python docs/fairtl_experiment.py --rows fairness   # only rows 1, 3 and 4
    python docs/fairtl_experiment.py --rows fewshot    # rows 6 to 10 (training: 2 and 5)

The setting of Teo, Abdollahzadeh and Cheung (AAAI 2023), on data this script makes
(docs/fairtl_data.py: 32 px "portraits" whose sensitive attribute is long / short hair):

- a large set biased 90/10 (2000 images, 10 % with long hair);
- a small balanced reference set (100 images, 5 % of the large one);
- a balanced held-out set (500 images) that FID/KID and the attribute classifier use;
- for few-shot adaptation, 10 images of a "target" domain (flat comic style), measured
  against 200 held-out target images.

Rows, each a run of artgen's own commands (artgen.train.gan):

1. pretrained on the biased set (the base of rows 3, 4 and 6 to 10); ``--bases N`` trains N
   such bases independently (training seeds 0, 100, 200, ...), and every adaptation row is
   run from each base with each of ``--seeds`` seeds;
2. importance weighting: the same training, but every attribute value drawn equally often
   (``balance``; Choi et al. 2020 with exact weights);
3. fairTL: the pretrained generator adapted on the reference set;
4. fairTL++: the same with multiple feedback and LP-FT;
5. trained from scratch on the reference set alone;
6. to 10. 10-shot adaptation to the target domain: full fine-tuning without augmentation,
   FreezeD, DiffAugment, and DiffAugment with CDC at the paper's weight (1000) and at 100.

Every run is measured with ``artgen eval``: FD against uniform of the attribute proportions
that a linear probe on EfficientNet-Lite0 features assigns to 500 generated images (the probe
is trained on the labelled held-out set and degraded copies of it; its proportions are
corrected with its confusion matrix on other degraded held-out copies, and FD comes with a
95 % bootstrap interval; the raw, uncorrected FD is kept beside it), FID/KID on
EfficientNet-Lite0 features, and intra-cluster diversity. The probe's calibration is also
checked on 400 freshly drawn portraits through other degradations (``probe_check``).
Writes docs/fairtl_results.md, docs/fairtl_results.json and docs/images/fairtl.png.
``--scale`` multiplies every step count (0.02 for a smoke test). ``--quick`` runs the rows
whose effect holds in the full table (pretrained, fairTL, fairTL++, 10-shot fine-tuning
with and without DiffAugment) at a smaller scale: 16 px images at batch 8, 3000 pre-
training and 400 adaptation steps, 200 samples, two bases with one seed each, into
out/fairtl-quick; its tables go to that folder.
``--jobs`` (default 2 where there are 2 cores) trains and measures that many runs at once
in worker processes that share the cores; on 2 cores two one-thread processes train these
small networks 1.5 (32 px) to 2 (16 px) times as fast as one two-thread process. An
adaptation waits for its base. ``--rows`` picks rows by group (``fairness``,
``training``, ``fewshot``) or by key, comma-separated; finished runs and their
``eval.json`` are reused, so separate invocations fill one run folder, and a last
``--rows all`` writes the tables. A finished run whose recorded settings differ from the
ones asked for (another step count, say) is an error that names them, never reused.
Only a full-scale invocation of every row writes to docs/; any other writes to ``--out``.
Each table row also has its paired change: every run minus the run it is compared with
(an adaptation against its own base; a 10-shot method against the same base and seed
without it).

The table gives, per row, the mean over every run (bases x seeds) with a 95 % interval
(Student t over the runs; a bootstrap interval over samples is kept per run in the JSON),
and the mean of each base separately, so the spread between bases shows.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "docs"))

NET = {
    "resolution": 32,
    "z_dim": 64,
    "w_dim": 64,
    "mapping_layers": 2,
    "channel_base": 512,
    "channel_max": 64,
}
PRETRAIN_STEPS = 4000
ADAPT_STEPS = 500
BATCH = 16
SAMPLES = 500
SEEDS = (0, 1, 2)  # adaptation runs are repeated with these seeds (pre-training: seed 0 only)
# --quick: 16 px images at batch 8 (about a third of the cost of a step; fewer steps on 32 px
# images give a base too poor to hold the bias, docs/fairtl.md), 3000 pre-training steps
# (at 2250 the bases are far less biased: FD 0.28 and 0.32 against 0.64), 400 adaptation
# steps, two independently trained bases with one adaptation seed each, two jobs at once
QUICK = {
    "pretrain": 3000, "adapt": 400, "samples": 200, "seeds": 1, "bases": 2,
    "resolution": 16, "batch": 8,
}  # fmt: skip
BASE_SEED = 100  # base b is pre-trained with seed b * BASE_SEED
FAIRNESS_ROWS = ("pretrained", "fairtl", "fairtl++")
ALL_ROWS = (
    "pretrained", "weighting", "fairtl", "fairtl++", "scratch",
    "full10", "freezed10", "diffaug10", "cdc10", "cdc100_10",
)  # fmt: skip
# --rows takes "all", these group names or row keys, comma-separated
ROW_GROUPS = {
    "all": ALL_ROWS,
    "fairness": FAIRNESS_ROWS,
    "training": ("weighting", "scratch"),
    "fewshot": ("full10", "freezed10", "diffaug10", "cdc10", "cdc100_10"),
}
# two-sided 95 % Student t quantiles by degrees of freedom (scipy.stats.t.ppf(0.975, df))
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean with its two-sided 95 % Student t interval; one value
    gives a zero-width interval."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, m, m
    half = T975.get(len(values) - 1, 1.96) * statistics.stdev(values) / len(values) ** 0.5
    return m, m - half, m + half


# the rows whose effect holds in the full table: fairTL's and fairTL++'s fall in FD and
# DiffAugment's gain in 10-shot diversity over plain fine-tuning
QUICK_ROWS = ("pretrained", "fairtl", "fairtl++", "full10", "diffaug10")


def probe_check(data: Path, n: int = 400, res: int = 32) -> dict:
    """The calibrated probe of ``artgen eval`` on ``n`` fresh portraits (half long-haired)
    through degradations drawn with other seeds: its confusion there, against the
    cross-validated estimate the evaluation corrects with, and its accuracy on them clean."""
    from fairtl_data import make_set

    from artgen.core.data import ImageSet, list_images, read_labels
    from artgen.eval.metrics import confusion_matrix, image_features, load_fid_network
    from artgen.eval.probe import calibrate_probe, degrade
    from artgen.eval.registry import DEGRADE_SEEDS, _degraded_features, _reference_features

    ref = list_images(data / "heldout")
    values = read_labels(str(data / "heldout" / "labels.csv"), ref).values("attr")
    net = load_fid_network("efficientnet-lite0", "cpu")
    # The features artgen eval computes of the same files, through its per-process memory
    # (the same key), so a job process that checks the probe then measures runs warm.
    real = _reference_features(ref, net, lambda: image_features(ref, net))
    degraded = _reference_features(
        ref,
        net,
        lambda: _degraded_features(ref, res, net, image_features),
        extra=("degraded", res, DEGRADE_SEEDS),
    )
    cal = calibrate_probe(real, degraded[0], degraded[1], values)
    classes = cal.probe.classes
    fresh = data / "probe_check"
    if not (fresh / "labels.csv").is_file():
        make_set(fresh, n, 0.5, seed=7)
    files = list_images(fresh)
    truth = [classes.index(v) for v in read_labels(str(fresh / "labels.csv"), files).values("attr")]
    pix = (
        torch.stack(
            [d["pixels"] for d in ImageSet(files, res, center_crop=True, random_flip=False)]
        )
        + 1
    ) / 2
    x = degrade(pix.clamp(0, 1), generator=torch.Generator().manual_seed(11))
    called = [classes.index(c) for c in cal.probe.predict(image_features(x, net))]
    clean = [classes.index(c) for c in cal.probe.predict(image_features(files, net))]

    def agree(a: list[int], b: list[int]) -> float:
        return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)

    return {
        "classes": classes,
        "cross_validated_confusion": confusion_matrix(cal.true, cal.predicted, 2).tolist(),
        "cross_validated_accuracy_degraded": cal.accuracy,
        "fresh_degraded_confusion": confusion_matrix(truth, called, 2).tolist(),
        "fresh_degraded_accuracy": agree(truth, called),
        "fresh_clean_accuracy": agree(truth, clean),
        "fresh_images": len(truth),
    }


# Each row against the run it is best compared with: the same base and seed where both
# have one (an adaptation against the base it started from has one pair per base).
PAIRED_WITH = (
    ("weighting", "pretrained"),
    ("fairtl", "pretrained"),
    ("fairtl++", "pretrained"),
    ("fairtl++", "fairtl"),
    ("freezed10", "full10"),
    ("diffaug10", "full10"),
    ("cdc10", "diffaug10"),
    ("cdc100_10", "diffaug10"),
)


def paired_changes(results: list[dict], key: str, other: str, metric: str) -> list[float]:
    """``metric`` of every run of ``key`` minus that of its partner run of ``other``: the
    run with the same base and seed, else the same base (a base has one run per base)."""
    theirs = {
        (r["base"], r["seed"]): r[metric]
        for r in results
        if r["key"] == other and r.get(metric) is not None
    }
    out = []
    for r in results:
        if r["key"] != key or r.get(metric) is None:
            continue
        partner = theirs.get((r["base"], r["seed"]), theirs.get((r["base"], 0)))
        if partner is not None:
            out.append(r[metric] - partner)
    return out


def paired_table(results: list[dict]) -> list[str]:
    """Markdown lines: each row's paired change in FD, FID and diversity, mean and 95 %
    interval over the pairs, with the number of pairs in which it went down."""
    lines = [
        "| method | against | pairs | change in FD (corrected) | change in FID | "
        "change in diversity |",
        "|---|---|---|---|---|---|",
    ]
    keys = dict.fromkeys(r["key"] for r in results)
    for key, other in PAIRED_WITH:
        if key not in keys or other not in keys:
            continue
        cells, n = [], 0
        for metric, fmt in (("fd", ".3f"), ("fid", ".1f"), ("diversity", ".3f")):
            d = paired_changes(results, key, other, metric)
            n = max(n, len(d))
            if not d:
                cells.append("n/a")
                continue
            m, lo, hi = mean_interval(d)
            down = sum(v < 0 for v in d)
            cells.append(f"{m:+{fmt}} [{lo:+{fmt}}, {hi:+{fmt}}], {down} of {len(d)} down")
        label = next(r["method"] for r in results if r["key"] == key)
        other_label = next(r["method"] for r in results if r["key"] == other)
        lines.append(f"| {label} | {other_label} | {n} | " + " | ".join(cells) + " |")
    return lines


def training_minutes(run: Path) -> float | None:
    """The run's own training time, from the last line of its log.jsonl (so a re-run that
    reuses a finished run still reports how long it took)."""
    log = run / "log.jsonl"
    if not log.is_file():
        return None
    lines = log.read_text().strip().splitlines()
    return json.loads(lines[-1])["seconds"] / 60 if lines else None


@dataclass(frozen=True)
class Job:
    """One unit of the experiment: ``fn(*args)``, started once every job named in ``after``
    has finished (a run that adapts a base waits for the base's training)."""

    name: str
    fn: Callable[..., Any]
    args: tuple = ()
    after: tuple[str, ...] = ()


def _worker_threads(n: int) -> None:
    torch.set_num_threads(n)


def run_jobs(jobs: list[Job], workers: int = 1, on_done: Callable[[str], None] = print) -> None:
    """Run ``jobs`` in their list order as their ``after`` allow: in this process when
    ``workers`` is 1, else in that many worker processes that share the cores between them.
    On 2 cores two one-thread processes train these small networks about 1.5 (32 px) to
    2 (16 px) times as fast as one two-thread process. The first error stops the rest."""
    names = [j.name for j in jobs]
    known = set(names)
    for j in jobs:
        missing = [a for a in j.after if a not in known]
        if missing:
            raise ValueError(f"job {j.name!r} waits for unknown jobs {missing}")
    if len(known) != len(names):
        raise ValueError("job names must be unique")
    finished: set[str] = set()
    if workers <= 1:
        pending = list(jobs)
        while pending:
            j = next((j for j in pending if finished.issuperset(j.after)), None)
            if j is None:
                raise ValueError(f"jobs wait on each other: {[j.name for j in pending]}")
            j.fn(*j.args)
            finished.add(j.name)
            pending.remove(j)
            on_done(j.name)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")  # a forked process may hang in OpenMP
    with ProcessPoolExecutor(workers, ctx, _worker_threads, (threads,)) as pool:
        pending, running = list(jobs), {}
        try:
            while pending or running:
                for j in [j for j in pending if finished.issuperset(j.after)]:
                    if len(running) >= workers:
                        break
                    running[pool.submit(j.fn, *j.args)] = j.name
                    pending.remove(j)
                if not running:
                    raise ValueError(f"jobs wait on each other: {[j.name for j in pending]}")
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    name = running.pop(f)
                    f.result()  # re-raises the job's error
                    finished.add(name)
                    on_done(name)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def eval_current(run: Path, options: Any) -> dict | None:
    """The run's eval.json if it was measured with ``options``, else None."""
    saved = run / "eval.json"
    m = json.loads(saved.read_text()) if saved.is_file() else None
    if m is None or m["options"] != json.loads(json.dumps(asdict(options))):
        return None
    return m


PATH_FIELDS = ("out", "images", "base", "labels")  # compared as resolved paths


def changed_settings(run: Path, training: Any) -> list[str]:
    """The settings in which the run already in ``run`` (its config.json) differs from
    ``training``, as "field: recorded -> asked" ("resume" aside); [] when it has none."""
    config = run / "config.json"
    if not config.is_file():
        return []
    saved = json.loads(config.read_text()).get("options", {})

    def norm(key: str, value: Any) -> Any:
        return str(Path(value).resolve()) if key in PATH_FIELDS and value else value

    return [
        f"{k}: {saved[k]!r} -> {v!r}"
        for k, v in asdict(training).items()
        if k != "resume" and k in saved and norm(k, saved[k]) != norm(k, v)
    ]


def train_and_measure(training: Any, measure: Any) -> None:
    """Train the run ``training`` describes (a GanTrainOptions or GanFinetuneOptions),
    resuming a stopped one and skipping a finished one, then write its eval.json unless
    it is already measured with ``measure`` (an EvalOptions)."""
    from artgen.eval.evaluate import evaluate
    from artgen.train.gan import GanTrainOptions, finetune_gan, train_gan

    run = Path(training.out)
    if not (run / "generator" / "model.safetensors").is_file():
        train = train_gan if isinstance(training, GanTrainOptions) else finetune_gan
        train(replace(training, resume=(run / "config.json").is_file()))
    if eval_current(run, measure) is None:
        evaluate(run, measure)


def save_probe_check(data: Path, res: int, path: Path) -> None:
    """probe_check, written to ``path`` as JSON (a job's result)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(probe_check(data, res=res), indent=2) + "\n")
    os.replace(tmp, path)


def save_probe_sheet(out: Path, keys: dict[str, str], path: Path) -> None:
    """probe_sheet, saved as a PNG at ``path`` (a job's result)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    probe_sheet(out, keys).save(path)


def labelled(image: Image.Image, text: str) -> Image.Image:
    out = Image.new("RGB", (image.width, image.height + 20), "white")
    out.paste(image, (0, 20))
    ImageDraw.Draw(out).text((4, 4), text, fill="black")
    return out


def probe_sheet(out: Path, keys: dict[str, str], n: int = 32) -> Image.Image:
    """``n`` samples of each run with the probe's call under each tile (red: long hair,
    grey: short), so a reader can check the probe on generated images by eye."""
    from artgen.core.data import list_images, read_labels
    from artgen.eval.metrics import image_features, load_fid_network
    from artgen.eval.probe import fit_linear_probe
    from artgen.eval.registry import _reference_features
    from artgen.runs.gan import load_generator
    from artgen.train.gan import generate_gan

    ref = list_images(out / "data" / "heldout")
    values = read_labels(str(out / "data" / "heldout" / "labels.csv"), ref).values("attr")
    net = load_fid_network("efficientnet-lite0", "cpu")
    probe = fit_linear_probe(
        _reference_features(ref, net, lambda: image_features(ref, net)), values
    )
    z, cols, rows = 3 * 32, 16, []
    for key, label in keys.items():
        images = generate_gan(load_generator(out / "runs" / key), n, seed=0)
        calls = probe.predict(image_features(images, net))
        share = sum(c == "long_hair" for c in calls) / n
        tile = Image.new("RGB", (cols * (z + 4), (n // cols) * (z + 12)), "white")
        d = ImageDraw.Draw(tile)
        for i, (im, call) in enumerate(zip(images, calls, strict=True)):
            x, y = (i % cols) * (z + 4), (i // cols) * (z + 12)
            tile.paste(im.resize((z, z), Image.Resampling.NEAREST), (x, y))
            d.rectangle(
                [x, y + z + 2, x + z - 1, y + z + 8],
                fill=(220, 30, 30) if call == "long_hair" else (190, 190, 190),
            )
        rows.append(labelled(tile, f"{label}: the probe calls {share:.0%} long hair (red)"))
    sheet = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    return sheet


def main() -> None:
    from fairtl_data import make_set

    from artgen.core.images import grid
    from artgen.eval.evaluate import EvalOptions
    from artgen.runs.gan import load_generator
    from artgen.train.gan import GanFinetuneOptions, GanTrainOptions, generate_gan

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="out/fairtl")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every step count")
    ap.add_argument("--samples", type=int, default=SAMPLES)
    ap.add_argument("--seeds", type=int, default=len(SEEDS), help="seeds per adaptation row")
    ap.add_argument("--bases", type=int, default=2, help="independently pre-trained bases")
    ap.add_argument(
        "--rows",
        default="all",
        help="all, fairness, training, fewshot or row keys, comma-separated (for example "
        "'weighting,scratch'); an invocation without every row writes its tables to --out",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="runs trained at once, in separate processes that share the cores (default: 2 "
        "where there are 2 cores; 1 runs everything in this process)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="the effects' direction, 6-13 min on 2 cores"
    )
    args = ap.parse_args()
    if args.jobs < 1:
        ap.error(f"--jobs {args.jobs}: give 1 or more")
    if args.quick:
        if args.out == "out/fairtl":
            args.out = "out/fairtl-quick"
        args.seeds, args.samples = QUICK["seeds"], min(args.samples, QUICK["samples"])
        args.bases = QUICK["bases"]
    seeds = SEEDS[: args.seeds]
    bases = range(max(1, args.bases))
    rows: set[str] = set()
    for part in filter(None, (p.strip() for p in args.rows.split(","))):
        if part not in ROW_GROUPS and part not in ALL_ROWS:
            ap.error(f"--rows: unknown row or group {part!r} (rows: {', '.join(ALL_ROWS)})")
        rows.update(ROW_GROUPS.get(part, (part,)))
    if not rows:
        ap.error("--rows: no rows given")

    def wanted(key: str) -> bool:
        if args.quick and key not in QUICK_ROWS:
            return False
        return key in rows

    out = Path(args.out)
    data = out / "data"
    pre, ada = (QUICK["pretrain"], QUICK["adapt"]) if args.quick else (PRETRAIN_STEPS, ADAPT_STEPS)
    pre, ada = max(2, round(pre * args.scale)), max(2, round(ada * args.scale))
    t0 = time.perf_counter()

    sets = {
        "biased": (2000, 0.1, 1, "source"),
        "reference": (100, 0.5, 2, "source"),
        "heldout": (500, 0.5, 4, "source"),
        "target10": (10, 0.5, 3, "target"),
        "target_heldout": (200, 0.5, 5, "target"),
        "clusters10": (10, 0.5, 6, "source"),
    }
    for name, (n, frac, seed, domain) in sets.items():
        if not (data / name / "labels.csv").is_file():
            make_set(data / name, n, frac, seed=seed, domain=domain)

    net = {**NET, "resolution": QUICK["resolution"]} if args.quick else NET
    batch = QUICK["batch"] if args.quick else BATCH
    common = {"batch_size": batch, "device": "cpu", "sample_every": 10**9}
    every = {"checkpoint_every": max(1, pre // 4)}
    runs: dict[str, dict] = {}
    jobs: list[Job] = []
    # docs/ holds the tables of a full-scale run of every row; anything else goes to --out
    every_row = rows >= set(ALL_ROWS)
    docs = REPO / "docs" if args.scale == 1.0 and not args.quick and every_row else out

    def name(key: str, base: int, seed: int = 0) -> str:
        """Run folder: base 0, seed 0 keep the plain key (the runs of earlier versions)."""
        return key + (f"-b{base}" if base else "") + (f"-s{seed}" if seed else "")

    def measure(key: str) -> EvalOptions:
        target = key.endswith("10")
        ref = data / ("target_heldout" if target else "heldout")
        return EvalOptions(
            images=str(ref),
            num_samples=args.samples,
            seed=0,
            device="cpu",
            kid_subsets=50,
            clusters=str(data / ("target10" if target else "clusters10")),
            labels="" if target else str(ref / "labels.csv"),
            attribute="" if target else "attr",
        )

    def add(key: str, label: str, run: Path, options: Any, base: int, seed: int, after=()):
        changed = changed_settings(run, options)
        if changed:
            ap.error(
                f"{run} was trained with other settings ({'; '.join(changed)}): give another "
                "--out, or remove that run to train it again"
            )
        jobs.append(Job(run.name, train_and_measure, (options, measure(key)), tuple(after)))
        runs[run.name] = {"label": label, "run": run, "seed": seed, "base": base, "key": key}

    def train(key: str, label: str, images: str, steps: int, **kw) -> None:
        if not wanted(key):
            return
        for base in bases:
            run = out / "runs" / name(key, base)
            options = GanTrainOptions(
                images=str(data / images),
                out=str(run),
                steps=steps,
                seed=base * BASE_SEED,
                **net,
                **common,
                **every,
                **kw,
            )
            add(key, label, run, options, base, 0)

    def adapt(key: str, label: str, images: str, **kw) -> None:
        if not wanted(key):
            return
        for base in bases:
            for seed in seeds:
                run = out / "runs" / name(key, base, seed)
                base_run = name("pretrained", base)
                options = GanFinetuneOptions(
                    base=str(out / "runs" / base_run),
                    images=str(data / images),
                    out=str(run),
                    steps=ada,
                    checkpoint_every=max(1, ada // 2),
                    seed=seed,
                    **common,
                    **kw,
                )
                # an adaptation waits for its base when this invocation trains the base
                after = [base_run] if wanted("pretrained") else []
                add(key, label, run, options, base, seed, after)

    labels = str(data / "biased" / "labels.csv")
    train("pretrained", "pretrained on the biased set", "biased", pre)
    train(
        "weighting",
        "importance weighting (biased set)",
        "biased",
        pre,
        labels=labels,
        balance="attr",
    )
    train("scratch", "from scratch on the reference set", "reference", pre)
    check_file = out / "probe_check.json"
    # Checking the probe needs no run: it goes after the trainings from nothing (the longest
    # jobs), and fills its process's memory of the reference features for the measurements.
    jobs.append(Job("probe check", save_probe_check, (data, net["resolution"], check_file)))
    adapt("fairtl", "fairTL (reference set)", "reference", method="fairtl")
    adapt("fairtl++", "fairTL++ (reference set)", "reference", method="fairtl++")
    adapt("full10", "10-shot target: full, no augmentation", "target10", augment="")
    adapt(
        "freezed10",
        "10-shot target: FreezeD (2 blocks), no aug.",
        "target10",
        augment="",
        freeze_d=2,
    )
    adapt("diffaug10", "10-shot target: DiffAugment", "target10")
    adapt("cdc10", "10-shot target: DiffAugment + CDC (weight 1000)", "target10", cdc=1000.0)
    adapt("cdc100_10", "10-shot target: DiffAugment + CDC (weight 100)", "target10", cdc=100.0)
    sheet_file = docs / "images" / "fairtl_probe.png"
    if all(k in runs for k in FAIRNESS_ROWS):
        keys = {k: runs[k]["label"] for k in FAIRNESS_ROWS}
        jobs.append(Job("probe sheet", save_probe_sheet, (out, keys, sheet_file), FAIRNESS_ROWS))

    workers = min(args.jobs, len(jobs))
    print(f"{len(jobs)} jobs, {workers} at a time", flush=True)
    run_jobs(jobs, workers, on_done=lambda n: print(f"done: {n}", flush=True))

    results = []
    tiles = []
    for r in runs.values():
        key = r["key"]
        m = eval_current(r["run"], measure(key))
        if m is None:
            raise RuntimeError(f"{r['run']}: eval.json missing after its job")
        minutes = training_minutes(r["run"])
        row = {
            "key": key,
            "run": r["run"].name,
            "base": r["base"],
            "seed": r["seed"],
            "minutes": None if minutes is None else round(minutes, 2),
            "method": r["label"],
            "fid": m["fid"]["value"],
            "kid": m["kid"]["mean"],
            "diversity": m["diversity"]["intra_cluster"],
        }
        if "attribute" in m:
            a = m["attribute"]
            row.update(
                fd=a["fairness_discrepancy"],
                fd_raw=a["fairness_discrepancy_raw"],
                fd_interval=a["fairness_discrepancy_interval"],
                long_hair=a["generated_proportions"]["long_hair"],
                long_hair_raw=a["observed_proportions"]["long_hair"],
                probe_accuracy=a["classifier_accuracy"],
                probe_accuracy_degraded=(a["calibration"] or {}).get("accuracy"),
            )
        results.append(row)
        print(json.dumps(row), flush=True)
        if r["seed"] != 0 or r["base"] != 0:
            continue
        G = load_generator(r["run"])
        tiles.append(
            labelled(
                grid(generate_gan(G, 16, seed=0), cols=8).resize(
                    (8 * 34 * 2, 2 * 34 * 2), Image.Resampling.NEAREST
                ),
                r["label"],
            )
        )  # noqa: E501
        first_metrics = m

    width = max(t.width for t in tiles)
    sheet = Image.new("RGB", (width, sum(t.height for t in tiles)), "white")
    y = 0
    for t in tiles:
        sheet.paste(t, (0, y))
        y += t.height

    (docs / "images").mkdir(parents=True, exist_ok=True)
    if tiles:
        sheet.save(docs / "images" / "fairtl.png")
    check = json.loads(check_file.read_text())
    print(json.dumps({"probe_check": check}), flush=True)
    meta = {
        "network": net,
        "pretrain_steps": pre,
        "adapt_steps": ada,
        "batch": batch,
        "samples": args.samples,
        "fid_network": first_metrics["fid"]["network"],
        "diversity": first_metrics["diversity"]["distance"],
        "seeds": list(seeds),
        "bases": len(bases),
        "base_seeds": [b * BASE_SEED for b in bases],
        "rows": args.rows,
        "minutes_this_invocation": (time.perf_counter() - t0) / 60,
        "quick": args.quick,
        "jobs": workers,
        "probe_check": check,
        "gan_defaults": {
            k: v
            for k, v in asdict(GanFinetuneOptions()).items()
            if k in ("lr", "augment", "feedback_lambda", "lp_steps")
        },
    }
    (docs / "fairtl_results.json").write_text(
        json.dumps({"meta": meta, "rows": results}, indent=2) + "\n"
    )
    lines = [
        "| method | runs | FD ↓ corrected: mean [95 % interval] | per base | FD raw | "
        "long hair, corrected / raw | FID ↓ | KID ↓ | diversity ↑ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(group: list[dict], key: str, fmt: str, spread: bool = True) -> str:
        values = [r[key] for r in group if r.get(key) is not None]
        if not values:
            return "n/a"
        m, lo, hi = mean_interval(values)
        if len(values) == 1 or not spread:
            return format(m, fmt)
        return f"{m:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"

    def per_base(group: list[dict], key: str) -> str:
        means = [
            statistics.fmean(r[key] for r in group if r["base"] == b and key in r)
            for b in sorted({r["base"] for r in group if key in r})
        ]
        return " / ".join(f"{v:.3f}" for v in means) if len(means) > 1 else "n/a"

    for key in dict.fromkeys(r["key"] for r in results):
        group = [r for r in results if r["key"] == key]
        lines.append(
            f"| {group[0]['method']} | {len(group)} | {cell(group, 'fd', '.3f')} | "
            f"{per_base(group, 'fd')} | {cell(group, 'fd_raw', '.3f')} | "
            f"{cell(group, 'long_hair', '.2f', False)} / "
            f"{cell(group, 'long_hair_raw', '.2f', False)} | "
            f"{cell(group, 'fid', '.1f')} | {cell(group, 'kid', '.3f')} | "
            f"{cell(group, 'diversity', '.3f')} |"
        )
    lines += ["", *paired_table(results)]
    c = check
    lines += [
        "",
        f"Probe check on {c['fresh_images']} fresh portraits through unseen degradations: "
        f"accuracy {c['fresh_degraded_accuracy']:.3f} degraded, {c['fresh_clean_accuracy']:.3f} "
        f"clean (cross-validated on degraded copies: {c['cross_validated_accuracy_degraded']:.3f}).",
    ]
    (docs / "fairtl_results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"{meta['minutes_this_invocation']:.1f} min; written to {docs}")


if __name__ == "__main__":
    main()
