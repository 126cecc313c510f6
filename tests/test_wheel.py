"""An installed artgen (a wheel, not this checkout) has every interface: `artgen app`
starts the studio from a temporary virtual environment."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.heavy  # builds a wheel and a venv: make test-all and CI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv holding the artgen wheel built from this tree; its other dependencies come
    from the test's own environment (a .pth line: no download, no editable finder)."""
    pytest.importorskip("gradio")
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    # a clean copy of the package sources, so the build leaves the checkout untouched
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "out", "runs", "*.egg-info", "build", "__pycache__", ".pytest_cache"
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(root / "dist"),
            str(src),
        ],
        check=True,
        timeout=600,
    )
    (wheel,) = (root / "dist").glob("artgen-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
        ],
        check=True,
        timeout=600,
    )
    shutil.rmtree(src)  # nothing of the checkout is left to fall back on
    return venv


def test_the_wheel_has_the_package_and_not_the_checkout(installed, tmp_path):
    out = subprocess.run(
        [
            str(installed / "bin" / "python"),
            "-c",
            "import artgen, artgen.cli.studio as s; print(artgen.__file__); print(s.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.split()
    assert all(str(installed) in p for p in out), out


def test_artgen_app_starts_from_an_installed_wheel(installed, tmp_path):
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(
        [str(installed / "bin" / "artgen"), "app", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # The page can answer before main() has printed its lines (they follow Gradio's
    # launch): read the output as it comes, and stop the server only once they are there.
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    wanted = (f"artgen studio: open http://127.0.0.1:{port}/", "`artgen app --share`")
    try:
        deadline, page = time.time() + 180, ""
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    page = r.read().decode("utf-8", "replace")
                break
            except OSError:
                time.sleep(1)
        assert proc.poll() is None, "".join(lines)
        assert "artgen" in page.lower() and "gradio" in page.lower()
        while time.time() < deadline and not all(w in "".join(lines) for w in wanted):
            time.sleep(0.2)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    reader.join(timeout=10)
    said = "".join(lines)
    # artgen's own advice (Gradio's names its launch(share=True), which a user cannot type)
    assert f"artgen studio: open http://127.0.0.1:{port}/" in said, said
    assert "`artgen app --share`" in said and "share=True" not in said, said


def test_an_installed_wheel_stylises_with_its_bundled_styles_offline(installed, tmp_path):
    photo = installed / "share" / "artgen" / "styles" / "examples" / "chelsea.jpg"
    assert photo.is_file()
    run = subprocess.run(
        [
            str(installed / "bin" / "artgen"),
            "stylize",
            str(photo),
            "--style",
            "swirls",
            "--method",
            "adain",
            "--size",
            "128",
            "-o",
            "out.png",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    from PIL import Image

    assert max(Image.open(tmp_path / "out.png").size) == 128
    # the wheel carries the ONNX graph, so an installed artgen takes the onnxruntime path too
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is not None:
        assert "(onnxruntime)" in run.stderr
