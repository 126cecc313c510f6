"""`artgen export onnx`: the fast method as one ONNX graph, equal to PyTorch on other sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from artgen.cli import main
from artgen.core.errors import ArtgenError

ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed")


@pytest.fixture(scope="module")
def tiny(lite0):
    """The real Lite0 encoder and a narrow random decoder (what is exported is the same graph)."""
    from artgen.models import adain as M

    cfg = M.AdaINConfig(widths=(8, 8, 8), tail=(8, 8))
    torch.manual_seed(0)
    enc = lite0.truncate([*cfg.levels, *cfg.style_layers])
    return M.AdaINModel(enc, M.build_decoder(cfg), cfg).eval()


# The default transform's export runs by default; the other (16 s on 2 cores) in the heavy
# set that make test-all and CI run.
@pytest.mark.parametrize(
    "wct", [pytest.param((), marks=pytest.mark.heavy, id="adain"), pytest.param((0,), id="wct")]
)
def test_the_graph_is_the_fast_method(tiny, tmp_path, wct):
    """What the graph computes is artgen's forward pass (border, AdaIN or whitening-colouring
    at each level, decoder, crop), for sizes that are no multiple of the stride and any
    alpha; onnxruntime agrees with PyTorch to 1e-3 on sizes the export never saw."""
    from artgen.interop.onnx_export import FastGraph, export_onnx

    graph = FastGraph(tiny, 32, wct)
    g = torch.Generator().manual_seed(1)
    c, s = torch.rand(1, 3, 70, 99, generator=g), torch.rand(1, 3, 61, 83, generator=g)
    with torch.no_grad():
        want = tiny(c, tiny.style_stats(s), 0.7, border=32, wct=wct).clamp(0, 1)
        got = graph(c, s, torch.tensor(0.7))
    assert got.shape == (1, 3, 70, 99)
    assert torch.allclose(got, want, atol=1e-5)

    report = export_onnx(tiny, tmp_path / "fast.onnx", border=32, wct=wct)
    assert report["max_abs_diff"] < 1e-3 and report["wct_levels"] == list(wct)
    sess = ort.InferenceSession(str(tmp_path / "fast.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["content", "style", "alpha"]
    c2, s2 = torch.rand(1, 3, 131, 45, generator=g), torch.rand(1, 3, 53, 77, generator=g)
    out = sess.run(
        None, {"content": c2.numpy(), "style": s2.numpy(), "alpha": np.array(1.0, np.float32)}
    )
    with torch.no_grad():
        ref = graph(c2, s2, torch.tensor(1.0)).numpy()
    assert out[0].shape == (1, 3, 131, 45)
    assert float(np.abs(out[0] - ref).max()) < 1e-3
    # a second export refuses to replace the file unless asked to
    with pytest.raises(ArtgenError, match="already exists"):
        export_onnx(tiny, tmp_path / "fast.onnx", border=32, wct=wct)


def test_export_onnx_command_refuses_a_bad_output_before_work(tmp_path, capsys):
    (tmp_path / "taken.onnx").write_bytes(b"mine")
    assert main(["export", "onnx", "-o", str(tmp_path / "taken.onnx")]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "taken.onnx").read_bytes() == b"mine"


@pytest.mark.heavy  # three exports: about 30 s on 2 cores
def test_the_runtime_graphs_share_their_weights_and_agree(tiny, tmp_path):
    """What docs/adain_ship.py ships for artgen's onnxruntime path: the whole network, its
    style-statistics half and its painting half, each tensor of their weights stored once in
    one file; run either way they give the fast method's picture."""
    import json

    import onnx

    from artgen.interop.onnx_export import RUNTIME_FILES, FastGraph, export_runtime

    report = export_runtime(tiny, tmp_path, border=32, wct=(0,))
    assert report["max_abs_diff"] < 1e-3
    protos = {
        k: onnx.load(str(tmp_path / RUNTIME_FILES[k]), load_external_data=False)
        for k in ("one", "stats", "paint")
    }
    where = {k: set() for k in protos}  # each graph's (offset, length) in the weights file
    for k, m in protos.items():
        for t in m.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                info = {e.key: e.value for e in t.external_data}
                assert info["location"] == RUNTIME_FILES["weights"]
                where[k].add((int(info["offset"]), int(info["length"])))
    # the halves use the whole network's tensors: the weights file holds each once
    assert where["stats"] and where["paint"] and where["stats"] | where["paint"] <= where["one"]
    total = sum(length for _, length in where["one"])
    size = (tmp_path / RUNTIME_FILES["weights"]).stat().st_size
    assert total <= size < total + 64 * len(where["one"])

    g = torch.Generator().manual_seed(3)
    c, s = torch.rand(1, 3, 90, 70, generator=g), torch.rand(1, 3, 50, 66, generator=g)
    with torch.no_grad():
        want = FastGraph(tiny, 32, (0,))(c, s, torch.tensor(0.9)).numpy()
    run = {
        k: ort.InferenceSession(
            str(tmp_path / RUNTIME_FILES[k]), providers=["CPUExecutionProvider"]
        )
        for k in protos
    }
    a = np.array(0.9, np.float32)
    one = run["one"].run(None, {"content": c.numpy(), "style": s.numpy(), "alpha": a})[0]
    names = [o.name for o in run["stats"].get_outputs()]
    stats = dict(zip(names, run["stats"].run(None, {"style": s.numpy()}), strict=True))
    two = run["paint"].run(None, {"content": c.numpy(), "alpha": a, **stats})[0]
    assert np.abs(one - want).max() < 1e-4 and np.abs(two - want).max() < 1e-4
    assert json.dumps(report)  # what the ship script records
