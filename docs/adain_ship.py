"""Ship a trained AdaIN decoder: RUN/model -> artgen/weights_data/adain-lite0 (fp16).

    python docs/adain_ship.py runs/adain

The provenance (steps, data, the run's config) goes into the shipped config.json's
``trained`` field; the weights are stored as fp16 safetensors (the network runs in fp32).
The network is then exported as the graphs the onnxruntime path of the CLI runs
(artgen.style.adain_onnx: fast.onnx whole, fast_stats.onnx and fast_paint.onnx for
folders, their weights in fast.weights), with fast.json recording the sha256 of the
decoder they were made from, so a stale graph is never used.
``--onnx-only`` exports them again for the decoder already shipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

from artgen.core.transforms import wct_levels
from artgen.interop import weights
from artgen.interop.onnx_export import RUNTIME_FILES, export_runtime
from artgen.style.adain import BORDER, AdaINOptions


def record(run: str | Path) -> dict:
    """What trained the decoder of ``run`` (a run folder of ``artgen train adain``): its
    command, steps and data, and, for a run that fine-tuned another decoder (``--base``),
    that decoder's own record under "from", so the whole history stays with the weights."""
    cfg = json.loads((Path(run) / "config.json").read_text())
    options = cfg["options"]
    base = options.get("base") or ""
    if base == "shipped":
        before = json.loads((weights.ADAIN_SHIPPED / "config.json").read_text())["trained"]
    elif base and (Path(base) / "config.json").is_file():
        before = record(base)  # a run folder: its own record
    else:
        before = {}
    return {
        "command": "artgen train adain "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in options.items()
            if v is not None and v is not False and v != "" and k not in ("out", "device", "resume")
        ),
        "steps": options["steps"],
        "style_weight": cfg["style_weight"],
        "num_content": cfg["num_content"],
        "num_styles": cfg["num_styles"],
        "data": "docs/adain_data.json",
        **(
            {
                "from": before,
                "total_steps": before.get("total_steps", before["steps"]) + options["steps"],
            }
            if before
            else {}
        ),
    }


def main(run: str) -> int:
    if run == "--onnx-only":  # the graph again, for the decoder already shipped
        return export(weights.ADAIN_SHIPPED)
    model = weights.load_adain(run)
    model.config = dataclasses.replace(model.config, trained=record(run))
    out = weights.save_adain_folder(model, weights.ADAIN_SHIPPED, half=True)
    return export(out)


def export(out: Path) -> int:
    shipped = weights.load_adain("shipped")  # what users get: the fp16 weights, in fp32
    wct = wct_levels(AdaINOptions().transform)  # the default transform's graphs
    report = export_runtime(shipped, out, border=BORDER, wct=wct)
    digest = hashlib.sha256((out / "decoder.safetensors").read_bytes()).hexdigest()
    meta = {
        "decoder_sha256": digest,
        "files": RUNTIME_FILES,
        "opset": report["opset"],
        "border": report["border"],
        "wct_levels": report["wct_levels"],
        "exported_by": "docs/adain_ship.py",
    }
    (out / "fast.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{out}: the graphs match PyTorch to {report['max_abs_diff']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
