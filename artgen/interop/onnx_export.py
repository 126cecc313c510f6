"""The fast method (encoder, AdaIN, decoder) as one ONNX graph, for onnxruntime, a web page
(onnxruntime-web) or a phone.

The graph is :class:`FastGraph`: inputs ``content`` (1, 3, H, W) and ``style`` (1, 3, h, w),
RGB in [0, 1], any sizes (the content above 32 px a side, the border it reflects; the
style at least 32), and ``alpha`` (a scalar, the paper's content/style trade-off, eq. 11);
output ``image`` (1, 3, H, W) in [0, 1]. It does what
``artgen stylize --method adain`` does with one style and no colour preservation: the photo
is reflect-padded by artgen.style.adain.BORDER px and to a multiple of the encoder's
stride, AdaIN is applied at every level of the network, the decoder paints, the margin is
cut off. The caller resizes the style (artgen gives it the output's long side).

Exported with torch.onnx's dynamo exporter and symbolic height and width, then checked
against the PyTorch network on two picture sizes (:func:`export_onnx` raises if the largest
difference passes ``atol``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from artgen.core.errors import ArtgenError
from artgen.models.adain import level_stats, transform_level

OPSET = 18


class FastGraph(nn.Module):
    """content, style, alpha -> stylised picture, in one module with no Python-side state."""

    def __init__(self, model: nn.Module, border: int, wct: tuple[int, ...]):
        super().__init__()
        if model.config.encoder == "vgg19":
            raise ArtgenError("ONNX export covers artgen's own networks (efficientnet-lite0)")
        self.encoder = model.encoder
        self.decoder = model.decoder
        self.levels = tuple(model.config.levels)
        self.multiple = model.multiple
        self.border = border
        self.wct = tuple(wct)  # the levels with whitening-colouring (artgen.models.adain)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        m = self.multiple
        h, w = x.shape[-2], x.shape[-1]
        return F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="reflect")

    def features(self, content: torch.Tensor) -> dict[str, torch.Tensor]:
        """The photo's features at each level, reflect-padded by the border and to the
        encoder's stride (as AdaINModel.forward pads it)."""
        b = self.border
        return self.encoder(self._pad(F.pad(content, (b, b, b, b), mode="reflect")), self.levels)

    def forward(self, content: torch.Tensor, style: torch.Tensor, alpha: torch.Tensor):
        h, w = content.shape[-2], content.shape[-1]
        f = self.features(content)
        fs = self.encoder(style, self.levels)  # as AdaINModel.style_stats: no padding
        t = [
            transform_level(f[n], level_stats(fs[n]), alpha, k in self.wct)
            for k, n in enumerate(self.levels)
        ]
        return self.paint(t, h, w)

    def paint(self, t: list[torch.Tensor], h: Any, w: Any) -> torch.Tensor:
        """The decoder's picture of the transformed features, the border cut off: in the
        phase form of its upsampling convs, and skipping what is cut off (SkipDecoder)."""
        b = self.border
        d = self.decoder.trims(b)[2]
        out = self.decoder(t, crop=b, phases=True)
        return out[..., b - d : b - d + h, b - d : b - d + w].clamp(0, 1)


class StyleStatsGraph(nn.Module):
    """style -> each level's (mean, std, covariance): the half of :class:`FastGraph` that
    depends only on the style image. artgen's onnxruntime path runs it once per style and
    size, so a folder does not encode the same painting again for every photo."""

    def __init__(self, fast: FastGraph):
        super().__init__()
        self.encoder, self.levels = fast.encoder, fast.levels

    def forward(self, style: torch.Tensor):
        fs = self.encoder(style, self.levels)
        return tuple(t for n in self.levels for t in level_stats(fs[n]))


class PaintGraph(nn.Module):
    """content, alpha and the style's statistics (what :class:`StyleStatsGraph` gives, three
    levels) -> picture: :class:`FastGraph` after the style's encoding."""

    def __init__(self, fast: FastGraph):
        super().__init__()
        if len(fast.levels) != 3:
            raise ArtgenError("the two-graph export covers networks with three levels")
        self.fast = fast

    def forward(self, content, alpha, m0, s0, c0, m1, s1, c1, m2, s2, c2):
        # Named one by one: torch.export takes no *args with per-argument shapes.
        g, stats = self.fast, ((m0, s0, c0), (m1, s1, c1), (m2, s2, c2))
        h, w = content.shape[-2], content.shape[-1]
        f = g.features(content)
        t = [transform_level(f[n], stats[k], alpha, k in g.wct) for k, n in enumerate(g.levels)]
        return g.paint(t, h, w)


FAST_INPUTS = ["content", "style", "alpha"]


def _example() -> tuple[tuple[torch.Tensor, ...], tuple]:
    """What :class:`FastGraph` is traced with, and the sizes left free: ``content`` above 32
    px a side (the reflected border needs more), ``style`` from 32. Traced at a size the
    encoder's stride does not divide: traced at one it does, the exporter took the padding
    to that multiple for zero at every size."""
    c, s, a = torch.rand(1, 3, 100, 130), torch.rand(1, 3, 64, 64), torch.tensor(1.0)
    H, W = torch.export.Dim("H", min=33, max=8192), torch.export.Dim("W", min=33, max=8192)
    sh, sw = torch.export.Dim("sh", min=32, max=8192), torch.export.Dim("sw", min=32, max=8192)
    return (c, s, a), ({2: H, 3: W}, {2: sh, 3: sw}, None)


def _program(graph: nn.Module, args: tuple, names: list, outs: list, shapes: tuple) -> Any:
    """``graph`` through torch.onnx's dynamo exporter (weights inside the file)."""
    return torch.onnx.export(
        graph,
        args,
        input_names=names,
        output_names=outs,
        dynamic_shapes=shapes,
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
        verbose=False,
    )


STATS_NAMES = tuple(f"{k}_{q}" for k in range(3) for q in ("mean", "std", "cov"))
# What artgen's onnxruntime path runs (artgen.style.adain_onnx): the whole network for one
# picture, and for a folder the style's statistics once and the painting for each photo.
# The three graphs hold the same weights, so they keep them in one file beside them.
RUNTIME_FILES = {
    "one": "fast.onnx",
    "stats": "fast_stats.onnx",
    "paint": "fast_paint.onnx",
    "weights": "fast.weights",
}


def _share_weights(models: list, weights: Path) -> None:
    """Move the large initializers of ``models`` (onnx ModelProtos) into one file, each
    distinct tensor once, and point the graphs at it (ONNX external data)."""
    import hashlib

    from onnx import TensorProto, numpy_helper
    from onnx.external_data_helper import set_external_data

    blob, where = bytearray(), {}
    for m in models:
        for t in m.graph.initializer:
            data = numpy_helper.to_array(t).tobytes()
            if len(data) < 1024:
                continue
            key = (t.data_type, tuple(t.dims), hashlib.sha256(data).digest())
            if key not in where:
                blob.extend(b"\0" * (-len(blob) % 64))  # aligned starts
                where[key] = (len(blob), len(data))
                blob.extend(data)
            offset, length = where[key]
            for field in ("float_data", "int32_data", "int64_data", "double_data"):
                t.ClearField(field)
            t.raw_data = data  # set_external_data wants it there, then it goes
            set_external_data(t, weights.name, offset, length)
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
    weights.write_bytes(bytes(blob))


def export_runtime(
    model: nn.Module, folder: str | os.PathLike, *, border: int, wct: tuple[int, ...]
) -> dict[str, Any]:
    """The fast network as the graphs artgen's onnxruntime path runs (RUNTIME_FILES in
    ``folder``): :class:`FastGraph`, :class:`StyleStatsGraph` and :class:`PaintGraph`,
    their weights in one file. Each way of running them is checked against
    :class:`FastGraph` in PyTorch at two unseen sizes (raises above 1e-3); returns the
    largest difference, the opset, border and levels."""
    import tempfile

    import onnx
    import onnxruntime as ort

    fast = FastGraph(model.float().eval(), border, wct).eval()
    stats_g, paint_g = StyleStatsGraph(fast).eval(), PaintGraph(fast).eval()
    (c, s, a), free = _example()
    folder = Path(folder)
    with torch.no_grad():
        st = stats_g(s)
        jobs = {
            "one": (fast, (c, s, a), FAST_INPUTS, ["image"], free),
            "stats": (stats_g, (s,), ["style"], list(STATS_NAMES), (free[1],)),
            "paint": (paint_g, (c, a, *st), ["content", "alpha", *STATS_NAMES], ["image"],
                      (free[0], None, *([None] * len(st)))),
        }  # fmt: skip
        models = {}
        with tempfile.TemporaryDirectory() as tmp:
            for key, (graph, args, names, outs, shapes) in jobs.items():
                path = Path(tmp) / RUNTIME_FILES[key]
                _program(graph, args, names, outs, shapes).save(str(path))
                models[key] = onnx.load(str(path))
            _share_weights(list(models.values()), Path(tmp) / RUNTIME_FILES["weights"])
            for key, m in models.items():
                onnx.save(m, str(Path(tmp) / RUNTIME_FILES[key]))
            folder.mkdir(parents=True, exist_ok=True)
            for name in ("weights", "one", "stats", "paint"):  # the weights first
                os.replace(Path(tmp) / RUNTIME_FILES[name], folder / RUNTIME_FILES[name])
    sess = {
        k: ort.InferenceSession(str(folder / RUNTIME_FILES[k]), providers=["CPUExecutionProvider"])
        for k in ("one", "stats", "paint")
    }

    def halves(c, s, a):
        stats = dict(zip(STATS_NAMES, sess["stats"].run(None, {"style": s}), strict=True))
        return sess["paint"].run(None, {"content": c, "alpha": a, **stats})[0]

    worst = max(_largest_difference(fast, _runner(sess["one"])), _largest_difference(fast, halves))
    if not worst <= 1e-3:
        raise ArtgenError(f"{folder}: the graphs differ from PyTorch by {worst:.2e}")
    return {"opset": OPSET, "border": border, "wct_levels": list(wct), "max_abs_diff": worst}


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    border: int,
    wct: tuple[int, ...],
    overwrite: bool = False,
    atol: float = 1e-3,
    check: bool = True,
) -> dict[str, Any]:
    """Write ``model`` (an AdaINModel) as ONNX to ``path`` (atomically), reflecting
    ``border`` px around the photo and whitening-colouring the levels in ``wct`` (as
    artgen.style.adain runs it); returns what the check measured: the largest difference
    from PyTorch at two sizes, and the border and levels it was made with."""
    try:
        import onnx  # noqa: F401  (the exporter needs onnx and onnxscript)
    except ImportError as e:
        raise ArtgenError("ONNX export needs the onnx extra: pip install 'artgen[onnx]'") from e
    from artgen.core.images import atomic_output

    graph = FastGraph(model.float().eval(), border, wct).eval()
    args, free = _example()
    with torch.no_grad(), atomic_output(path, overwrite=overwrite) as tmp:
        _program(graph, args, FAST_INPUTS, ["image"], free).save(str(tmp))
    report: dict[str, Any] = {"path": str(path), "opset": OPSET, "border": border}
    report["wct_levels"] = list(graph.wct)
    if check:
        report["max_abs_diff"] = check_onnx(graph, Path(path), atol)
    return report


def _runner(sess: Any):
    """(content, style, alpha) arrays -> a whole-network session's picture."""
    return lambda c, s, a: sess.run(None, {"content": c, "style": s, "alpha": a})[0]


def _largest_difference(graph: nn.Module, run) -> float:
    """The largest difference between ``run(content, style, alpha)`` (numpy arrays) and
    ``graph`` in PyTorch, on two sizes no export saw."""
    worst, g = 0.0, torch.Generator().manual_seed(0)
    for (h, w), (sh, sw), alpha in (((77, 141), (90, 60), 1.0), ((200, 120), (128, 160), 0.6)):
        c, s = torch.rand(1, 3, h, w, generator=g), torch.rand(1, 3, sh, sw, generator=g)
        with torch.no_grad():
            ref = graph(c, s, torch.tensor(alpha)).numpy()
        got = run(c.numpy(), s.numpy(), torch.tensor(alpha).numpy())
        worst = max(worst, float(abs(got - ref).max()))
    return worst


def check_onnx(graph: nn.Module, path: Path, atol: float) -> float:
    """The largest difference between onnxruntime and PyTorch on two unseen sizes."""
    try:
        import onnxruntime as ort
    except ImportError:
        return float("nan")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = _largest_difference(graph, _runner(sess))
    if not worst <= atol:
        raise ArtgenError(f"{path}: the ONNX graph differs from PyTorch by {worst:.2e} > {atol}")
    return worst


__all__ = [
    "FastGraph",
    "PaintGraph",
    "StyleStatsGraph",
    "check_onnx",
    "export_onnx",
    "export_runtime",
]
