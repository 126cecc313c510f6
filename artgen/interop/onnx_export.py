"""The fast method (encoder, AdaIN, decoder) as one ONNX graph, for onnxruntime, a web page
(onnxruntime-web) or a phone.

The graph is :class:`FastGraph`: inputs ``content`` (1, 3, H, W) and ``style`` (1, 3, h, w),
RGB in [0, 1], any sizes of at least 32 px a side, and ``alpha`` (a scalar, the paper's
content/style trade-off, eq. 11); output ``image`` (1, 3, H, W) in [0, 1]. It does what
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

    def forward(self, content: torch.Tensor, style: torch.Tensor, alpha: torch.Tensor):
        b = self.border
        h, w = content.shape[-2], content.shape[-1]
        x = self._pad(F.pad(content, (b, b, b, b), mode="reflect"))
        f = self.encoder(x, self.levels)
        fs = self.encoder(style, self.levels)  # as AdaINModel.style_stats: no padding
        t = [
            transform_level(f[n], level_stats(fs[n]), alpha, k in self.wct)
            for k, n in enumerate(self.levels)
        ]
        out = self.decoder.forward_reference(t)
        return out[..., b : b + h, b : b + w].clamp(0, 1)


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
    c = torch.rand(1, 3, 96, 128)
    s = torch.rand(1, 3, 64, 64)
    a = torch.tensor(1.0)
    H, W = torch.export.Dim("H", min=32, max=8192), torch.export.Dim("W", min=32, max=8192)
    sh, sw = torch.export.Dim("sh", min=32, max=8192), torch.export.Dim("sw", min=32, max=8192)
    with torch.no_grad(), atomic_output(path, overwrite=overwrite) as tmp:
        program = torch.onnx.export(
            graph,
            (c, s, a),
            input_names=["content", "style", "alpha"],
            output_names=["image"],
            dynamic_shapes=({2: H, 3: W}, {2: sh, 3: sw}, None),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        program.save(str(tmp))
    report: dict[str, Any] = {"path": str(path), "opset": OPSET, "border": border}
    report["wct_levels"] = list(graph.wct)
    if check:
        report["max_abs_diff"] = check_onnx(graph, Path(path), atol)
    return report


def check_onnx(graph: nn.Module, path: Path, atol: float) -> float:
    """The largest difference between onnxruntime and PyTorch on two unseen sizes."""
    try:
        import onnxruntime as ort
    except ImportError:
        return float("nan")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    g = torch.Generator().manual_seed(0)
    for (h, w), (sh, sw), alpha in (((77, 141), (90, 60), 1.0), ((200, 120), (128, 160), 0.6)):
        c, s = torch.rand(1, 3, h, w, generator=g), torch.rand(1, 3, sh, sw, generator=g)
        with torch.no_grad():
            ref = graph(c, s, torch.tensor(alpha)).numpy()
        got = sess.run(
            None, {"content": c.numpy(), "style": s.numpy(), "alpha": torch.tensor(alpha).numpy()}
        )[0]
        worst = max(worst, float(abs(got - ref).max()))
    if not worst <= atol:
        raise ArtgenError(f"{path}: the ONNX graph differs from PyTorch by {worst:.2e} > {atol}")
    return worst


__all__ = ["FastGraph", "export_onnx", "check_onnx"]
