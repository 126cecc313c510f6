"""Ship a trained AdaIN decoder: RUN/model -> artgen/weights_data/adain-lite0 (fp16).

    python docs/adain_ship.py runs/adain

The provenance (steps, data, the run's config) goes into the shipped config.json's
``trained`` field; the weights are stored as fp16 safetensors (the network runs in fp32).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from artgen import weights


def main(run: str) -> int:
    model = weights.load_adain(run)
    cfg = json.loads((Path(run) / "config.json").read_text())
    model.config = dataclasses.replace(
        model.config,
        trained={
            "command": "artgen train adain "
            + " ".join(
                f"--{k.replace('_', '-')} {v}"
                for k, v in cfg["options"].items()
                if v is not None
                and v is not False
                and v != ""
                and k not in ("out", "device", "resume")
            ),
            "steps": cfg["options"]["steps"],
            "style_weight": cfg["style_weight"],
            "num_content": cfg["num_content"],
            "num_styles": cfg["num_styles"],
            "data": "docs/adain_data.json",
        },
    )
    out = weights.save_adain_folder(model, weights.ADAIN_SHIPPED, half=True)
    print(f"shipped {run} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
