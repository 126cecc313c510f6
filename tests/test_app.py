"""The studio app, launched on 127.0.0.1 and driven through gradio_client (and a real browser)."""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import struct
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from artgen.core.images import read_params

from .conftest import REPO, photo


def load_app():
    from artgen.cli import studio

    return studio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# gradio_client keeps what it downloads in the shared /tmp/gradio unless told otherwise
# (it reads GRADIO_TEMP_DIR once, at import): the tests' downloads go in a folder of their own.
DOWNLOADS = Path(tempfile.mkdtemp(prefix="artgen-test-downloads-"))


def connect(url: str) -> Client:
    return Client(url, verbose=False, download_files=str(DOWNLOADS))


@pytest.fixture(scope="module")
def server():
    app = load_app()
    cfg = app.AppConfig(port=free_port(), max_queue=3, concurrency=1, device="cpu")
    demo, studio = app.launch(cfg, prevent_thread_lock=True)
    yield f"http://127.0.0.1:{cfg.port}/", studio
    demo.close()
    studio.close()
    shutil.rmtree(DOWNLOADS, ignore_errors=True)


def args(content, style_weights=(1, 0, 0, 0), size=128, quality="Fast preview", seed=0):
    return [
        handle_file(str(content)),
        *style_weights,
        None,
        1,
        None,
        1,
        1.0,
        "none",
        size,
        quality,
        "efficientnet-lite0",
        seed,
    ]


def png_header(w: int, h: int) -> bytes:
    """A PNG that claims w x h pixels (only the header: opening it decodes nothing)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_stylize_end_to_end(server, tmp_path):
    url, _ = server
    client = connect(url)
    path, status, download, session = client.predict(
        *args(REPO / "styles/examples/chelsea.jpg"), api_name="/stylize"
    )
    im = Image.open(path)
    assert im.format == "PNG" and im.size == (128, 85)
    p = read_params(path)  # the served PNG keeps its parameters
    assert p["options"]["size"] == 128 and p["styles"][0]["file"] == "swirls.jpg"
    assert "Done: 128x85" in status and len(session) == 1


def test_the_api_takes_named_parameters(server):
    """Client.view_api() names every parameter (not param_1 ... param_18), and a script
    calls the endpoints by keyword, leaving out what it does not use."""
    url, studio = server
    client = connect(url)
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    names = [p["parameter_name"] for p in api["/stylize"]["parameters"]]
    weights = [f"weight_{e.name}" for e in studio.styles]
    assert names == [
        "content",
        *weights,
        *["style_1", "style_1_weight", "style_2", "style_2_weight"],
        *["strength", "preserve_color", "size", "quality", "backbone", "seed"],
        *["region_mask", "region_style", "rest_style"],
    ]
    assert [p["parameter_name"] for p in api["/video"]["parameters"]][:2] == ["clip", weights[0]]
    assert all(p["parameter_has_default"] for p in api["/stylize"]["parameters"][1:])
    path, status, _, _ = client.predict(
        content=handle_file(str(REPO / "styles/examples/chelsea.jpg")),
        weight_mosaic=1,
        quality="Instant",
        size=128,
        api_name="/stylize",
    )
    p = read_params(path)
    assert [s["file"] for s in p["styles"]] == ["mosaic.jpg"] and p["method"] == "adain"
    assert Image.open(path).size == (128, 85) and status.startswith("Done: 128x85")


def test_instant_quality_uses_the_fast_method(server):
    url, _ = server
    client = connect(url)
    path, status, _, _ = client.predict(
        *args(REPO / "styles/examples/chelsea.jpg", size=384, quality="Instant"),
        api_name="/stylize",
    )
    p = read_params(path)
    assert p["method"] == "adain" and p["options"]["model"] == "shipped"
    assert Image.open(path).size == (384, 255) and "the fast method" in status


def test_live_preview_renders_only_in_instant_mode(server):
    _, studio = server
    n = len(studio.styles)
    rest = [1] + [0] * (n - 1) + [None, 1, None, 1, 0.7, "none", 256]
    content = str(REPO / "styles/examples/coffee.jpg")
    skipped = studio.live(content, *rest, "Final", "auto", 0, [])
    assert all(not isinstance(x, str) for x in skipped)  # gr.skip(): nothing re-rendered
    path, status, _ = studio.live(content, *rest, "Instant", "auto", 0, [])
    assert status.startswith("Instant: 256x") and read_params(path)["options"]["strength"] == 0.7


def test_strokes_that_painted_nothing_are_said_as_such(server):
    """A stroke started on the editor's grey margin leaves an empty layer: the status says
    that, not 'pick a style' (the region's style is set)."""
    app = load_app()
    _, studio = server
    n = len(studio.styles)
    empty = Image.new("RGBA", (128, 85), (0, 0, 0, 0))
    editor = {"background": None, "layers": [empty], "composite": None}
    rest = [0] * n + [None, 1, None, 1, 1.0, "none", 128]
    content = str(REPO / "styles/examples/coffee.jpg")
    _, status, _ = studio.live(content, *rest, "Instant", "auto", 0, [], editor, "mosaic", "none")
    assert status == app.NOTHING_PAINTED
    *_, last = studio.stylize(content, *rest, "Instant", "auto", 0, [], editor, "mosaic", "none")
    assert last[1] == app.problem(app.NOTHING_PAINTED)
    _, status, _ = studio.live(content, *rest, "Instant", "auto", 0, [], None, "mosaic", "none")
    assert status == "Pick a style to see it live."


def test_bad_uploads_get_clear_errors_and_server_keeps_serving(server, tmp_path):
    from gradio_client.exceptions import AppError

    url, _ = server
    client = connect(url)
    (tmp_path / "notes.png").write_text("this is a text file, renamed")
    (tmp_path / "bomb.png").write_bytes(png_header(30_000, 30_000))
    (tmp_path / "big.png").write_bytes(png_header(6000, 5000))
    buf = io.BytesIO()
    photo(300, 200).save(buf, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    # Refused while Gradio opens the upload: an error toast.
    expected = {
        "notes.png": "Content: notes.png is not an image",
        "bomb.png": "Content: bomb.png has too many pixels",
    }
    for name, message in expected.items():
        with pytest.raises(AppError) as e:
            client.predict(*args(tmp_path / name), api_name="/stylize")
        assert message in str(e.value), (name, str(e.value))
    # Refused by artgen's own checks: the status line says why.
    expected = {
        "big.png": "content: big.png: refused, 6000x5000 is 30,000,000 pixels (limit 24,000,000)",
        "cut.jpg": "content: cut.jpg: corrupt or truncated image",
    }
    for name, message in expected.items():
        status = client.predict(*args(tmp_path / name), api_name="/stylize")[1]
        assert message in status, (name, status)
    # No style: said in the status line; the result is left as it was (no error badges).
    _, status, _, _ = client.predict(
        *args(REPO / "styles/examples/chelsea.jpg", style_weights=(0, 0, 0, 0)),
        api_name="/stylize",
    )
    assert "Not started" in status and "Pick at least one style" in status
    # Still serving.
    path = client.predict(*args(REPO / "styles/examples/coffee.jpg"), api_name="/stylize")[0]
    assert Image.open(path).size == (128, 85)


def test_bad_seed_is_said_in_the_status_line_and_nothing_changes(server):
    _, studio = server
    n = len(studio.styles)
    content = str(REPO / "styles/examples/coffee.jpg")
    for seed in (1e30, -1, 2.5, float("nan"), float("inf")):
        rest = (
            [1]
            + [0] * (n - 1)
            + [None, 1, None, 1, 1.0, "none", 128, "Fast preview", "efficientnet-lite0", seed, []]
        )
        updates = list(studio.stylize(content, *rest))
        assert len(updates) == 1, seed
        image, status, download, gallery, history = updates[0]
        assert status.startswith("**Not started:** Seed") and "whole number from 0 to" in status
        assert all(not isinstance(x, (str, list)) for x in (image, download, gallery, history))
    rest = [1] + [0] * (n - 1) + [None, 1, None, 1, 1.0, "none", 128, "Instant", "auto", 1e30, []]
    image, status, _ = studio.live(content, *rest)
    assert "Seed" in status and not isinstance(image, str)


def test_each_server_keeps_its_files_in_a_private_folder_removed_on_close(server, tmp_path):
    import os
    import tempfile

    url, studio = server
    assert os.environ["GRADIO_TEMP_DIR"] == str(studio.cache_dir)
    assert studio.cache_dir.parent == studio.root == studio.out_dir.parent
    client = connect(url)
    path = client.predict(*args(REPO / "styles/examples/coffee.jpg"), api_name="/stylize")[0]
    served = {p.name for p in studio.cache_dir.rglob("*") if p.is_file()}
    assert "coffee.jpg" in served  # the upload landed in this server's cache
    assert Image.open(path).size == (128, 85)

    # A second studio (not launched) removes a killed server's folder and its own on close.
    app = load_app()
    dead = tempfile.mkdtemp(prefix=app.ROOT_PREFIX)
    os.makedirs(os.path.join(dead, "gradio"))
    with open(os.path.join(dead, "pid"), "w") as f:
        f.write("999999999\n")  # no such process
    other = app.Studio(app.AppConfig(device="cpu"))
    try:
        assert not os.path.exists(dead) and studio.root.exists()  # a live server's is kept
        assert other.root.exists()
    finally:
        other.close()
        os.environ["GRADIO_TEMP_DIR"] = str(studio.cache_dir)  # the fixture's server goes on
    assert not other.root.exists()


def test_messages_never_show_the_servers_private_paths(server):
    _, studio = server
    app = load_app()
    upload = studio.cache_dir / "0123abcd" / "my photo.png"
    msg = app.public(f"{upload}: too small (8x8); and {studio.out_dir / 'r.png'}, see")
    assert str(studio.root) not in msg and "tmp" not in msg
    assert msg == "my photo.png: too small (8x8); and r.png, see"
    assert app.problem(f"{upload}: bad") == "**Not started:** my photo.png: bad"
    deep = studio.cache_dir / "a b" / "c d" / "été 'x'.JPG"
    assert app.public(f"{deep}: cannot read") == "été 'x'.JPG: cannot read"


def test_stop_cancels_and_frees_the_worker(server):
    url, _ = server
    client = connect(url)
    job = client.submit(
        *args(REPO / "styles/examples/chelsea.jpg", size=384, quality="Final"), api_name="/stylize"
    )
    deadline = time.time() + 60
    while not job.outputs() and time.time() < deadline:  # wait for the first streamed preview
        time.sleep(0.2)
    assert job.outputs(), "no intermediate image was streamed"
    assert any(t.name == "artgen-stylize" for t in threading.enumerate())
    job.cancel()
    deadline = time.time() + 30
    while any(t.name == "artgen-stylize" for t in threading.enumerate()) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(t.name == "artgen-stylize" for t in threading.enumerate()), (
        "the job kept running"
    )


def test_ten_concurrent_clients(server):
    """Each of 10 simultaneous clients gets a result or a clear 'queue is full'; none is lost."""
    url, _ = server

    def one(k: int):
        client = connect(url)
        try:
            path = client.predict(
                *args(REPO / "styles/examples/chelsea.jpg", seed=k), api_name="/stylize"
            )[0]
            return ("ok", Image.open(path).size)
        except Exception as e:  # noqa: BLE001 - classified below
            return ("error", f"{type(e).__name__}: {e}")

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(one, range(10), timeout=240))
    assert len(outcomes) == 10
    ok = [o for o in outcomes if o[0] == "ok"]
    full = [o for o in outcomes if o[0] == "error" and "queue is full" in o[1].lower()]
    assert len(ok) + len(full) == 10, outcomes  # nothing else happened to anyone
    assert all(size == (128, 85) for _, size in ok)
    assert len(ok) >= 3 and len(full) >= 1, outcomes  # queue of 3 + 1 running; the rest turned away
    # And the server answers normally afterwards.
    client = connect(url)
    assert Image.open(
        client.predict(*args(REPO / "styles/examples/coffee.jpg"), api_name="/stylize")[0]
    ).size == (
        128,
        85,
    )


def test_each_client_gets_its_own_picture_at_concurrency_above_one(tmp_path, monkeypatch):
    """Ten clients at once on a server running four jobs at a time, each with its own photo
    (its own height) and the default seed: each must be served the picture made from its own upload,
    and every job must leave its own result file (names once collided and overwrote)."""
    import hashlib
    import os

    app = load_app()
    # A second studio in this process points Gradio's cache at its own folder and unsets it
    # on close: give the module's server its folder back afterwards.
    monkeypatch.setenv("GRADIO_TEMP_DIR", os.environ.get("GRADIO_TEMP_DIR", ""))
    cfg = app.AppConfig(port=free_port(), max_queue=16, concurrency=4, device="cpu")
    demo, studio = app.launch(cfg, prevent_thread_lock=True)
    url = f"http://127.0.0.1:{cfg.port}/"
    uploads = []
    for k in range(10):
        path = tmp_path / f"photo{k}.png"
        photo(128, 40 + 6 * k, seed=k).save(path)
        uploads.append(path)

    def one(k: int):
        out = connect(url).predict(
            *args(uploads[k], size=128, quality="Instant", seed=0), api_name="/stylize"
        )[0]
        return Path(out).read_bytes()

    try:
        with ThreadPoolExecutor(10) as pool:
            got = list(pool.map(one, range(10), timeout=240))
        results = sorted(studio.out_dir.glob("artgen-*.png"))
    finally:
        demo.close()
        studio.close()
    for k, data in enumerate(got):
        mine = tmp_path / f"got{k}.png"
        mine.write_bytes(data)
        assert Image.open(mine).size == (128, 40 + 6 * k), k
        p = read_params(mine)
        assert p["content"]["sha256"] == hashlib.sha256(uploads[k].read_bytes()).hexdigest()
    assert len(results) == 10, [r.name for r in results]


CHROMIUM = "/usr/bin/chromium"


@contextlib.contextmanager
def browser_page(url: str):
    """A page of headless Debian Chromium at ``url`` (Playwright's own browsers can't be had)."""
    import os

    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} not installed (make browser)")
    from playwright.sync_api import sync_playwright

    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            yield page
        finally:
            browser.close()


@pytest.mark.heavy
def test_real_browser_session(server, tmp_path):
    """Headless Chromium: upload a photo, pick a style, press Stylize, get a picture."""
    import os

    from playwright.sync_api import expect

    url, _ = server
    with browser_page(url) as page:
        page.locator("#content input[type=file]").set_input_files(
            str(REPO / "styles/examples/chelsea.jpg")
        )
        expect(page.locator("#content img").first).to_be_visible(timeout=20_000)
        page.locator("#style-gallery img").first.click()  # "swirls"
        expect(page.locator("#w-swirls input[type=number]")).to_have_value("1", timeout=10_000)
        page.locator("#stylize").click()
        expect(page.locator("#status")).to_contain_text("Done", timeout=180_000)
        expect(page.locator("#result img").first).to_be_visible()
        expect(page.locator("#download")).to_be_visible()
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(1500)  # let the galleries finish laying out
        shot = tmp_path / "studio.png"
        page.screenshot(path=str(shot), full_page=True)
        if os.environ.get("ARTGEN_SCREENSHOT"):  # how docs/images/studio.png is made
            page.screenshot(
                path=os.environ["ARTGEN_SCREENSHOT"],
                clip={"x": 0, "y": 0, "width": 1400, "height": 900},
            )
        src = page.locator("#result img").first.get_attribute("src")
        assert src and ".png" in src
    assert Image.open(shot).size[0] == 1400


@pytest.mark.heavy
def test_real_browser_instant_mode_updates_live(server, tmp_path):
    """Headless Chromium: in Instant mode, clicking a style renders without pressing Stylize."""
    import os

    from playwright.sync_api import expect

    url, _ = server
    with browser_page(url) as page:
        page.get_by_label("Instant").check()
        page.locator("#content input[type=file]").set_input_files(
            str(REPO / "styles/examples/coffee.jpg")
        )
        expect(page.locator("#content img").first).to_be_visible(timeout=20_000)
        page.locator("#style-gallery img").nth(2).click()  # "waves"
        expect(page.locator("#status")).to_contain_text("Instant:", timeout=60_000)
        expect(page.locator("#result img").first).to_be_visible()
        first = page.locator("#result img").first.get_attribute("src")
        page.locator("#style-gallery img").nth(1).click()  # add "mosaic": a blend
        expect(page.locator("#result img").first).not_to_have_attribute(
            "src", first, timeout=60_000
        )
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(1000)
        if os.environ.get("ARTGEN_SCREENSHOT_INSTANT"):
            page.screenshot(
                path=os.environ["ARTGEN_SCREENSHOT_INSTANT"],
                clip={"x": 0, "y": 0, "width": 1400, "height": 900},
            )


# ----------------------------------------------------------------- regions (issue 12, sec. 3)


def painted_layer(size, left_fraction=0.5):
    """An ImageEditor brush layer: opaque strokes over the left part, transparent elsewhere."""
    import numpy as np

    w, h = size
    a = np.zeros((h, w, 4), np.uint8)
    a[:, : int(w * left_fraction)] = (255, 51, 102, 255)
    return Image.fromarray(a, "RGBA")


def _kept_and_styled(path, content, size):
    """Mean difference from the photo on the right 40% (left unpainted) and the left 40%."""
    import numpy as np

    out = Image.open(path).convert("RGB")
    ref = Image.open(content).convert("RGB").resize(out.size, Image.Resampling.LANCZOS)
    d = np.abs(np.asarray(out, float) - np.asarray(ref, float)) / 255
    w = out.width
    return d[:, int(0.6 * w) :].mean(), d[:, : int(0.4 * w)].mean()


def test_painted_region_through_the_app_function(server):
    """The painted layer's alpha is the mask of the painted area's style; the rest gets the
    styles picked above, another style, or none (the photo)."""
    _, studio = server
    n = len(studio.styles)
    content = str(REPO / "styles/examples/chelsea.jpg")
    editor = {
        "background": Image.open(content),
        "composite": None,
        "layers": [painted_layer(Image.open(content).size)],
    }
    rest = [0] * n + [None, 1, None, 1, 1.0, "none", 256]
    # Instant, swirls where painted, nothing picked above and rest "none": the photo stays.
    path, status, _ = studio.live(
        content, *rest, "Instant", "auto", 0, [], editor, "swirls", "none"
    )
    assert status.startswith("Instant: 256x")
    p = read_params(path)
    assert [s["file"] for s in p["styles"]] == ["swirls.jpg"]
    assert p["styles"][0]["mask"]["file"] == "painted-mask"
    kept, styled = _kept_and_styled(path, content, 256)
    assert kept < 1 / 255 and styled > 0.1, (kept, styled)  # measured 0 and 0.23
    # Gatys (Fast preview), waves for the rest: both regions stylised, each by its style.
    updates = list(
        studio.stylize(
            content,
            *rest[:-1],
            128,
            "Fast preview",
            "efficientnet-lite0",
            0,
            [],
            editor,
            "swirls",
            "waves",
        )
    )
    path, status = updates[-1][0], updates[-1][1]
    assert status.startswith("Done: 128x85")
    p = read_params(path)
    assert [s["file"] for s in p["styles"]] == ["swirls.jpg", "waves.jpg"]
    assert "mask" in p["styles"][0] and "mask" not in p["styles"][1]
    kept, styled = _kept_and_styled(path, content, 128)
    assert kept > 0.05 and styled > 0.05, (kept, styled)
    # Nothing painted: exactly as without regions (the styles picked above, no mask).
    empty = {
        "background": Image.open(content),
        "composite": None,
        "layers": [painted_layer(Image.open(content).size, 0)],
    }
    weights = [1] + [0] * (n - 1)
    path, _, _ = studio.live(
        content, *weights, *rest[n:], "Instant", "auto", 0, [], empty, "swirls", "none"
    )
    assert "mask" not in read_params(path)["styles"][0]
    # A region style slot that is empty says so in the status line.
    _, status, _ = studio.live(
        content, *rest, "Instant", "auto", 0, [], editor, "Style 1 (your upload)", "none"
    )
    assert "Style 1 (your upload) is chosen for a region but empty" in status


def test_painted_region_through_the_api(server, tmp_path):
    """Over HTTP, as the page sends it: Gradio's ImageEditor payload with a brush layer."""
    url, _ = server
    client = connect(url)
    content = REPO / "styles/examples/coffee.jpg"
    painted_layer(Image.open(content).size).save(tmp_path / "layer.png")
    editor = {
        "background": handle_file(str(content)),
        "composite": None,
        "layers": [handle_file(str(tmp_path / "layer.png"))],
    }
    path, status, _, _ = client.predict(
        *args(content, style_weights=(0, 0, 0, 0), size=256, quality="Instant"),
        editor,
        "mosaic",
        "none",
        api_name="/stylize",
    )
    assert "the fast method" in status
    p = read_params(path)
    assert (
        p["styles"][0]["file"] == "mosaic.jpg" and p["styles"][0]["mask"]["file"] == "painted-mask"
    )
    kept, styled = _kept_and_styled(path, content, 256)
    assert kept < 1 / 255 and styled > 0.1, (kept, styled)


def test_region_layers_claiming_too_many_pixels_or_too_many_layers_are_refused(server, tmp_path):
    """A small PNG whose header claims 6000x5000 (30 MP, past the 24 MP upload limit) as a
    layer, and five layers: refused from the headers, before Gradio decodes any of them."""
    from gradio_client.exceptions import AppError

    url, _ = server
    client = connect(url)
    content = REPO / "styles/examples/coffee.jpg"
    (tmp_path / "huge.png").write_bytes(png_header(6000, 5000))
    painted_layer(Image.open(content).size).save(tmp_path / "layer.png")
    layer = handle_file(str(tmp_path / "layer.png"))
    cases = {
        "a layer of 30,000,000 pixels; the limit is 24,000,000": [
            handle_file(str(tmp_path / "huge.png"))
        ],
        "5 layers; the limit is 4": [layer] * 5,
    }
    for message, layers in cases.items():
        editor = {"background": handle_file(str(content)), "composite": None, "layers": layers}
        with pytest.raises(AppError) as e:
            client.predict(
                *args(content, style_weights=(0, 0, 0, 0), size=128, quality="Instant"),
                editor,
                "mosaic",
                "none",
                api_name="/stylize",
            )
        assert message in str(e.value), str(e.value)


# ------------------------------------------------------------------- video (issue 12, sec. 4)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """A 1 s clip (12 frames at 12 fps, a pan over a photo, with a sine tone), a 3 s one,
    and a text file named .mp4."""
    import numpy as np

    from artgen.video import temporal

    from .media import write_video

    d = tmp_path_factory.mktemp("clips")
    cat = np.asarray(Image.open(REPO / "styles/examples/chelsea.jpg").convert("RGB"), np.float32)
    short = temporal.pan_zoom_clip(cat / 255, 12, (96, 64), pan=(1.5, 0.5), zoom=1.01)
    long = temporal.pan_zoom_clip(cat / 255, 36, (96, 64), pan=(0.5, 0.2), zoom=1.0)
    (d / "notes.mp4").write_text("not a video")
    return {
        "short": write_video(d / "short.mp4", short.frames, fps=12),
        "long": write_video(d / "long.mp4", long.frames, fps=12),
        "bad": d / "notes.mp4",
    }


def _video_args(clip, style_weights=(1, 0, 0, 0), size=128, seed=0):
    return [clip, *style_weights, None, 1, None, 1, 1.0, "none", size, seed]


def test_a_short_clip_through_the_api_keeps_frames_rate_and_sound(server, clips):
    import av

    url, _ = server
    client = connect(url)
    video, status = client.predict(
        *_video_args(handle_file(str(clips["short"]))), api_name="/video"
    )
    assert status.startswith("Done: 12 frames, 128x84 at 12 fps (sound: kept"), status
    path = video["video"] if isinstance(video, dict) else video
    with av.open(str(path)) as c:
        assert c.streams.video[0].average_rate == 12
        assert c.streams.audio and c.streams.audio[0].codec_context.name == "aac"
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 12 and frames[0].shape == (84, 128, 3)


def test_clips_over_the_limits_or_unreadable_are_said_in_the_status(server, clips):
    import dataclasses

    _, studio = server
    saved = studio.config
    try:
        studio.config = dataclasses.replace(saved, max_video_seconds=2.0)
        *_, (_, status) = list(studio.video(str(clips["long"]), *_video_args(None)[1:]))
        assert status.startswith("**Not started:** video: long.mp4 is 3.0 s")
        assert "at most 2 s and 300 frames" in status and "`artgen video`" in status
        studio.config = dataclasses.replace(saved, max_video_frames=10)
        *_, (_, status) = list(studio.video(str(clips["short"]), *_video_args(None)[1:]))
        assert "short.mp4 has more than 10 frames" in status  # it stopped decoding there
        assert "at most 10 s and 10 frames" in status
    finally:
        studio.config = saved
    *_, (_, status) = list(studio.video(str(clips["bad"]), *_video_args(None)[1:]))
    assert status.startswith("**Not started:** video:") and "notes.mp4" in status
    assert "\n" not in status and str(clips["bad"].parent) not in status
    *_, (_, status) = list(studio.video(None, *_video_args(None)[1:]))
    assert "Add a video clip first" in status
    none = _video_args(None, style_weights=(0, 0, 0, 0))[1:]
    *_, (_, status) = list(studio.video(str(clips["short"]), *none))
    assert "Pick at least one style" in status


def _band_differences(png: Path, content: Path) -> list[float]:
    """Mean difference from the photo in each tenth of the width, left to right."""
    import numpy as np

    out = Image.open(png).convert("RGB")
    ref = Image.open(content).convert("RGB").resize(out.size, Image.Resampling.LANCZOS)
    d = np.abs(np.asarray(out, float) - np.asarray(ref, float)).mean(axis=(0, 2)) / 255
    w = out.width
    return [float(d[int(k * w / 10) : int((k + 1) * w / 10)].mean()) for k in range(10)]


@pytest.mark.heavy
def test_real_browser_paints_a_region(server, tmp_path):
    """Headless Chromium, as a user: a photo, Regions, the brush dragged over a vertical
    band, swirls for the band and the photo for the rest; in Instant mode the result
    comes live, swirls inside the band, the photo's own pixels outside, and the PNG
    records the painted mask."""
    from playwright.sync_api import expect

    url, _ = server
    content = REPO / "styles/examples/chelsea.jpg"
    with browser_page(url) as page:
        page.get_by_label("Instant").check()
        page.locator("#content input[type=file]").set_input_files(str(content))
        expect(page.locator("#content img").first).to_be_visible(timeout=20_000)
        page.get_by_text("Regions: paint where a style goes").click()
        editor = page.locator("#region-editor")
        canvas = editor.locator("canvas").first
        expect(canvas).to_be_visible(timeout=10_000)
        canvas.scroll_into_view_if_needed()
        page.wait_for_timeout(1000)  # the photo is laid into the editor
        editor.locator("button[aria-label='Brush']").click()
        page.wait_for_timeout(300)
        box = canvas.bounding_box()
        # The photo fills the canvas's middle: paint from 36% to 50% of the canvas,
        # about 22% to 58% of the photo with the brush's width.
        x0, x1 = box["x"] + 0.36 * box["width"], box["x"] + 0.5 * box["width"]
        page.mouse.move(x0, box["y"] + 0.1 * box["height"])
        page.mouse.down()
        for k in range(6):  # a zig-zag with the 40 px brush covers the band
            y = box["y"] + box["height"] * (0.1 + 0.8 * k / 5)
            page.mouse.move(x1, y, steps=2)
            page.mouse.move(x0, y + 0.08 * box["height"], steps=2)
        page.mouse.up()
        page.locator("#rest-style input").click()
        page.keyboard.press("ArrowDown")  # "None: keep the photo", below "The styles picked above"
        page.keyboard.press("Enter")
        expect(page.locator("#rest-style input")).to_have_value("None: keep the photo")
        expect(page.locator("#status")).to_contain_text("Instant:", timeout=60_000)
        page.wait_for_timeout(3000)  # the render for the last change
        expect(page.locator("#status")).to_contain_text("Instant:", timeout=60_000)
        src = page.locator("#result img").first.get_attribute("src")
        png = tmp_path / "painted.png"
        png.write_bytes(page.request.get(src).body())
    p = read_params(png)
    assert [s["file"] for s in p["styles"]] == ["swirls.jpg"]
    assert p["styles"][0]["mask"]["file"] == "painted-mask"
    bands = _band_differences(png, content)
    # Measured: 0 in the first two and last four tenths, 0.16 to 0.22 in between.
    assert max(bands[:2] + bands[6:]) < 1 / 255, bands
    assert min(bands[2:5]) > 0.1, bands


@pytest.mark.heavy
def test_real_browser_stylises_a_short_clip(server, clips):
    from playwright.sync_api import expect

    url, _ = server
    with browser_page(url) as page:
        page.locator("#style-gallery img").nth(2).click()  # "waves"
        expect(page.locator("#w-waves input[type=number]")).to_have_value("1", timeout=10_000)
        page.get_by_text("Video: a short clip").click()
        page.locator("#clip input[type=file]").set_input_files(str(clips["short"]))
        expect(page.locator("#clip video").first).to_be_attached(timeout=20_000)
        page.locator("#stylize-video").click()
        expect(page.locator("#video-status")).to_contain_text("Done: 12 frames", timeout=120_000)
        expect(page.locator("#video-result video").first).to_be_attached()
        src = page.locator("#video-result video").first.get_attribute("src")
        assert src and ".mp4" in src
