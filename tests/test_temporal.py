"""artgen.video.temporal: flow, warping, occlusion masks, blending, the temporal loss and the
flicker metric, against hand-computed cases and a real photo moved by a known motion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from artgen.video import temporal as T

from .conftest import REPO


@pytest.fixture(scope="module")
def cat() -> np.ndarray:
    return (
        np.asarray(Image.open(REPO / "styles/examples/chelsea.jpg").convert("RGB"), np.float32)
        / 255
    )


@pytest.fixture(scope="module")
def clip(cat) -> T.SyntheticClip:
    """The cat photo seen by a camera panning 1.5 px right, 0.5 px down and zooming 1% per frame."""
    return T.pan_zoom_clip(cat, 6, (96, 64), pan=(1.5, 0.5), zoom=1.01)


def test_pure_pan_has_the_pan_as_its_true_flow(cat):
    c = T.pan_zoom_clip(cat, 3, (80, 48), pan=(2.0, -1.0), zoom=1.0)
    for p in c.pairs:
        assert np.allclose(p.flow[..., 0], 2.0, atol=1e-4) and np.allclose(
            p.flow[..., 1], -1.0, atol=1e-4
        )
        # What frame t shows in its last 2 columns and first row, frame t-1 did not show.
        assert p.mask[:, -2:].sum() == 0 and p.mask[0].sum() == 0
        assert p.mask[1:, :-2].min() == 1
    # Frame t at p shows what frame t-1 showed at p + (2, -1): exactly, away from the edges.
    a, b = c.frames[1], c.frames[0]
    assert np.abs(a[5:-5, 5:-5] - b[4:-6, 7:-3]).max() < 0.02


def test_warping_by_the_true_motion_brings_the_previous_frame_onto_the_current(clip):
    for k, p in enumerate(clip.pairs):
        cur, prev = clip.frames[k + 1], clip.frames[k]
        m = p.mask > 0
        warped = np.abs(T.warp(prev, p.flow) - cur)[m].mean()
        unwarped = np.abs(prev - cur)[m].mean()
        assert warped < 0.012 and unwarped > 4 * warped, (warped, unwarped)


def test_dis_flow_recovers_the_known_motion(clip):
    for k, p in enumerate(clip.pairs):
        est = T.frame_pair(clip.frames[k + 1], clip.frames[k])
        both = (p.mask > 0) & (est.mask > 0)
        epe = np.linalg.norm(est.flow - p.flow, axis=-1)[both]
        assert epe.mean() < 0.3 and np.median(epe) < 0.2, (epe.mean(), np.median(epe))
        # The estimated mask trusts almost all that is truly in view, and little that is not.
        assert est.mask[p.mask > 0].mean() > 0.9
        assert est.mask[p.mask == 0].mean() < 0.5
    # Flow vectors point the documented way: frame t at p ~ frame t-1 at p + f(p).
    f = T.dis_flow(clip.frames[1], clip.frames[0])
    assert np.median(f[..., 0]) > 1.0 and np.median(f[..., 1]) > 0.2


def test_warp_by_a_whole_pixel_is_exact():
    rng = np.random.default_rng(0)
    img = rng.random((20, 30, 3)).astype(np.float32)
    flow = np.zeros((20, 30, 2), np.float32)
    flow[..., 0] = 3.0
    out = T.warp(img, flow)
    assert np.array_equal(out[:, :-3], img[:, 3:])
    assert np.array_equal(out[:, -1], img[:, -1])  # edges replicated
    assert T.inside_frame(flow)[:, -3:].sum() == 0 and T.inside_frame(flow)[:, :-3].min() == 1


def test_consistency_mask_follows_ruder_et_al():
    h, w = 24, 32
    back = np.zeros((h, w, 2), np.float32)
    back[..., 0] = 2.0
    undo = -back
    m = T.consistency_mask(back, undo)
    assert m[:, : w - 2].min() == 1 and m[:, w - 2 :].max() == 0  # only what left the view
    # Flows that do not undo each other: |2 + 2|^2 = 16 > 0.01 * 8 + 0.5 everywhere.
    assert T.consistency_mask(back, back).max() == 0
    # Within the tolerance (0.5 px^2 plus 1% of the motion) still consistent.
    near = undo.copy()
    near[..., 0] += 0.6
    assert T.consistency_mask(back, near)[:, : w - 2].min() == 1
    # A motion boundary: the left half moves 3 px, the right half stands still.
    step = np.zeros((h, w, 2), np.float32)
    step[:, : w // 2, 0] = 3.0
    fwd = T.warp(-step, step)
    mb = T.consistency_mask(step, fwd)
    assert mb[:, w // 2 - 1 : w // 2 + 1].max() == 0  # the boundary
    assert mb[:, 2:8].min() == 1 and mb[:, w // 2 + 3 :].min() == 1  # away from it
    assert T.consistency_mask(step, fwd, motion_boundaries=False)[:, w // 2].max() == 1


def test_warping_error_by_hand():
    h, w = 10, 12
    zero = np.zeros((h, w, 2), np.float32)
    ones = np.ones((h, w), np.float32)
    prev = np.full((h, w, 3), 0.2, np.float32)
    cur = prev.copy()
    cur[:, : w // 2] = 0.5  # the left half changed by 0.3 in each of R, G, B
    # Per pixel ||(0.3, 0.3, 0.3)||^2 = 0.27 on the left half, 0 on the right half.
    assert T.pair_warping_error(cur, prev, zero, ones) == pytest.approx(0.135, rel=1e-5)
    left = np.zeros((h, w), np.float32)
    left[:, : w // 2] = 1
    assert T.pair_warping_error(cur, prev, zero, left) == pytest.approx(0.27, rel=1e-5)
    assert T.pair_warping_error(cur, prev, zero, 1 - left) == 0.0
    assert T.pair_warping_error(cur, prev, zero, np.zeros((h, w), np.float32)) == 0.0
    # A frame that moved by the flow has no warping error where the flow is trusted.
    rng = np.random.default_rng(1)
    a = rng.random((h, w, 3)).astype(np.float32)
    b = np.roll(a, -2, axis=1)  # b(p) = a(p + 2)
    flow = zero.copy()
    flow[..., 0] = 2.0
    assert T.pair_warping_error(b, a, flow, T.inside_frame(flow)) == pytest.approx(0.0, abs=1e-10)
    # The clip's error is the mean over its pairs.
    pairs = [T.FramePair(zero, ones), T.FramePair(zero, left)]
    assert T.warping_error([prev, cur, cur], pairs) == pytest.approx((0.135 + 0.0) / 2)
    with pytest.raises(ValueError):
        T.warping_error([prev, cur], pairs)


def test_blending_and_detail_restoration():
    rng = np.random.default_rng(2)
    h, w = 48, 64
    a = rng.random((h, w, 3)).astype(np.float32)
    b = rng.random((h, w, 3)).astype(np.float32)
    ones, zeros = np.ones((h, w), np.float32), np.zeros((h, w), np.float32)
    assert np.array_equal(T.blend_warped(a, b, ones, 0.0), a)
    assert np.array_equal(T.blend_warped(a, b, zeros, 0.7), a)  # occluded: left alone
    assert np.allclose(T.blend_warped(a, b, ones, 0.25), 0.75 * a + 0.25 * b)
    with pytest.raises(ValueError):
        T.blend_warped(a, b, ones, 1.0)
    # Blending two unrelated textures halves their contrast's energy; restoring gives it back.
    mixed = T.blend_warped(a, b, ones, 0.5)
    assert mixed.std() < 0.75 * a.std()
    fixed = T.restore_detail(mixed, a)
    assert fixed.std() == pytest.approx(a.std(), rel=0.06)  # (clipped to [0, 1])
    assert np.allclose(fixed.reshape(-1, 3).mean(0), a.reshape(-1, 3).mean(0), atol=0.01)
    # ... and leaves a frame that needs nothing alone.
    assert np.abs(T.restore_detail(a, a) - a).max() < 1e-4


def test_temporal_loss_by_hand_and_only_where_trusted():
    x = torch.ones(1, 3, 4, 4, requires_grad=True)
    target = torch.zeros(1, 3, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1  # half the pixels
    loss = T.temporal_loss(x, target, mask)
    assert float(loss.detach()) == pytest.approx(0.5)  # 1/D sum c (x - w)^2 = 24 / 48
    loss.backward()
    assert x.grad[..., 2:].abs().max() == 0 and x.grad[..., :2].min() > 0
    assert float(T.temporal_loss(x.detach(), target, mask[0, 0])) == pytest.approx(0.5)


def test_style_distance_is_zero_for_the_style_itself(lite0):
    rng = np.random.default_rng(3)
    s = torch.from_numpy(rng.random((1, 3, 64, 64)).astype(np.float32))
    other = torch.full((1, 3, 64, 64), 0.5)
    assert T.style_distance(s, s, lite0) == pytest.approx(0.0, abs=1e-4)
    far = T.style_distance(other, s, lite0)
    assert far > 1.0
    # A batch gives the mean over its pictures.
    both = torch.cat([s, other])
    assert T.style_distance(both, s, lite0) == pytest.approx(far / 2, rel=1e-3)
    frames = [np.zeros((4, 5, 3), np.float32), np.ones((4, 5, 3), np.float32)]
    assert T.frames_tensor(frames).shape == (2, 3, 4, 5)
