import math

import numpy as np
import pytest
import torch
from torch import nn

from artgen.core.errors import ArtgenError
from artgen.eval.metrics import (
    FeatureDistance,
    assign_clusters,
    attribute_proportions,
    confusion_matrix,
    correct_proportions,
    fairness_discrepancy,
    fairness_discrepancy_interval,
    fid_from_features,
    frechet_distance,
    gaussian_stats,
    image_batch,
    image_features,
    intra_cluster_diversity,
    kid_from_features,
    load_fid_network,
    load_lpips,
    polynomial_mmd2,
)
from artgen.interop.weights import VGG19_FILE, torch_checkpoint_dir

from .conftest import photo, stripes


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # On a 2-core machine shared with other jobs, torch's OpenMP threads spin-wait on each
    # other and the CNN forward passes here ran 10x slower (2.3 s instead of 0.2 s for six
    # images). One thread is as fast when the machine is idle and steady when it is not.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random_cov(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def _rotation(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


# --- FID -------------------------------------------------------------------------------------


def test_frechet_distance_of_identical_gaussians_is_zero():
    s = _random_cov(16, 0)
    mu = torch.randn(16, dtype=torch.float64)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)
    # A singular covariance (rank 3 of 16), as with fewer images than features.
    x = torch.randn(4, 16, dtype=torch.float64)
    s = torch.cov(x.T)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_closed_form_for_diagonal_covariances_and_any_rotation():
    mu1 = torch.tensor([0.0, 1.0, -2.0, 0.5])
    mu2 = torch.tensor([1.0, 1.0, 0.0, 0.5])
    v1 = torch.tensor([1.0, 4.0, 0.25, 9.0])
    v2 = torch.tensor([4.0, 4.0, 1.0, 0.0])  # a zero variance: singular covariance
    expected = float((mu1 - mu2).pow(2).sum() + (v1.sqrt() - v2.sqrt()).pow(2).sum())
    assert expected == pytest.approx(5.0 + 1.0 + 0.25 + 9.0)
    got = frechet_distance(mu1, torch.diag(v1), mu2, torch.diag(v2))
    assert got == pytest.approx(expected, rel=1e-10)
    # The covariances no longer commute with a generic matrix but still with each other
    # after one common rotation; the distance must not change.
    q = _rotation(4, 1)
    s1, s2 = q @ torch.diag(v1).double() @ q.T, q @ torch.diag(v2).double() @ q.T
    assert frechet_distance(q @ mu1.double(), s1, q @ mu2.double(), s2) == pytest.approx(
        expected, rel=1e-9
    )
    assert frechet_distance(mu1.numpy(), np.diag(v1), mu2.numpy(), np.diag(v2)) == pytest.approx(
        expected, rel=1e-10
    )  # numpy arrays are accepted too


def test_frechet_distance_matches_scipy_sqrtm_on_general_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    s1, s2 = _random_cov(12, 2), _random_cov(12, 3)
    mu1, mu2 = torch.randn(12, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    covmean = linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    ref = float((mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * np.trace(covmean))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)


def test_fid_from_features_uses_mean_and_unbiased_covariance():
    a = torch.tensor([[-1.0], [1.0]])  # mean 0, variance (ddof 1) 2
    assert fid_from_features(a, torch.tensor([[2.0], [4.0]])) == pytest.approx(9.0)  # var 2
    # var 8: 9 + (sqrt(2) - sqrt(8))^2 = 9 + 2
    assert fid_from_features(a, torch.tensor([[1.0], [5.0]])) == pytest.approx(11.0)
    x = torch.randn(200, 6, dtype=torch.float64)
    y = torch.randn(150, 6, dtype=torch.float64) * 2 + 1
    ref = frechet_distance(x.mean(0), np.cov(x.numpy().T), y.mean(0), np.cov(y.numpy().T))
    assert fid_from_features(x, y) == pytest.approx(ref, rel=1e-10)
    # Few images in many dimensions take the N x M singular-value route; it must agree
    # with the D x D eigenvalue route of frechet_distance.
    x, y = torch.randn(30, 64), torch.randn(40, 64) * 1.5 + 0.3
    ref = frechet_distance(*gaussian_stats(x), *gaussian_stats(y))
    assert ref > 10 and fid_from_features(x, y) == pytest.approx(ref, rel=1e-9)
    few = torch.randn(5, 64)
    assert fid_from_features(few, few) == pytest.approx(0.0, abs=1e-6)


def test_fid_rejects_bad_input_with_one_line():
    with pytest.raises(ArtgenError, match="at least 2"):
        fid_from_features(torch.randn(1, 4), torch.randn(5, 4))
    with pytest.raises(ArtgenError, match="NaN"):
        fid_from_features(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), torch.randn(5, 2))
    with pytest.raises(ArtgenError, match="differ"):
        fid_from_features(torch.randn(3, 4), torch.randn(3, 5))


# --- KID -------------------------------------------------------------------------------------


def test_polynomial_mmd2_by_hand():
    # d = 1, k(x, y) = (xy + 1)^3. XX: k(0,1)=1; YY: k(1,2)=27;
    # XY: k(0,1)+k(0,2)+k(1,1)+k(1,2) = 1+1+8+27 = 37 -> 1 + 27 - 2*37/4 = 9.5
    a, b = torch.tensor([[0.0], [1.0]]), torch.tensor([[1.0], [2.0]])
    assert polynomial_mmd2(a, b) == pytest.approx(9.5)
    assert polynomial_mmd2(a, b) == pytest.approx(polynomial_mmd2(b, a))


def test_kid_near_zero_for_one_distribution_and_positive_for_a_shift():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 16, generator=g), torch.randn(300, 16, generator=g)
    shifted = torch.randn(300, 16, generator=g) + 0.5
    same_mean, same_std = kid_from_features(a, b, subsets=50, subset_size=150)
    shift_mean, shift_std = kid_from_features(a, shifted, subsets=50, subset_size=150)
    assert abs(same_mean) < 0.05
    assert shift_mean > 0.5 and shift_mean > 20 * abs(same_mean)
    assert 0 < same_std < 0.1 and 0 < shift_std < 0.3
    # Reproducible for a seed, and another seed draws other subsets.
    assert kid_from_features(a, b, subsets=50, subset_size=150) == (same_mean, same_std)
    assert kid_from_features(a, b, subsets=50, subset_size=150, seed=1)[0] != same_mean


def test_kid_of_sets_smaller_than_a_subset_is_the_full_estimate_with_a_bootstrap_spread():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(20, 4, generator=g), torch.randn(20, 4, generator=g) + 1
    mean, std = kid_from_features(a, b, subsets=50, subset_size=1000)
    # The estimate is that of the whole sets; the spread is no longer 0 ("+- 0.0000").
    assert mean == pytest.approx(polynomial_mmd2(a, b)) and std > 0.01 * mean
    with pytest.raises(ArtgenError, match="at least 2"):
        kid_from_features(a[:1], b)


def test_kid_bootstrap_spread_matches_the_spread_over_fresh_sets():
    # 60 independent pairs of 80-row sets from N(0, I) and N(0.3, I): the sd of their KIDs
    # is the true standard error; each pair's bootstrap spread should estimate it.
    rng = np.random.default_rng(0)
    kids, spreads = [], []
    for _ in range(60):
        a, b = rng.normal(size=(80, 6)), rng.normal(size=(80, 6)) + 0.3
        mean, std = kid_from_features(a, b, subsets=40, subset_size=1000, seed=1)
        kids.append(mean)
        spreads.append(std)
    true_se = float(np.std(kids))
    assert 0.7 * true_se < float(np.median(spreads)) < 1.5 * true_se, (true_se, spreads[:5])


def test_kid_bootstrap_rows_leave_out_pairs_of_a_row_with_itself():
    from artgen.eval.metrics import _poly_mmd2_rows

    # d = 1: x = (0, 1, 2) drawn as rows (0, 0, 1); pairs of distinct rows: (0,1) twice each
    # way, k(0, 1) = 1, so XX = 1; y = (1, 2) whole: YY = k(1, 2) = 27; XY: the mean of
    # k(x, y) over the 3 x 2 drawn pairs: rows 0, 0, 1 against 1, 2: (1+1+1+1+8+27)/6.
    x, y = np.array([[0.0], [1.0], [2.0]]), np.array([[1.0], [2.0]])
    got = _poly_mmd2_rows(x, y, np.array([0, 0, 1]), np.array([0, 1]))
    assert got == pytest.approx(1 + 27 - 2 * 39 / 6)


# --- Feature networks ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fid_net():
    return load_fid_network("efficientnet-lite0")


def _photos(seeds) -> list:
    # Mirrored and unmirrored landscapes of one kind, differing in noise.
    return [photo(64, 48, seed=s).transpose(0) if s % 2 else photo(64, 48, seed=s) for s in seeds]


def test_lite0_fid_features_separate_different_image_sets(fid_net):
    assert fid_net.label == "efficientnet-lite0 (ImageNet, 1280-d pooled)"
    a, a2 = _photos(range(6)), _photos(range(6, 12))
    b = [stripes(48, seed=s).rotate(90 * (s % 2)) for s in range(6)]
    fa, fa2, fb = (image_features(x, fid_net, batch_size=4) for x in (a, a2, b))
    assert fa.shape == (6, 1280) and fa.dtype == torch.float32
    same, different = fid_from_features(fa, fa2), fid_from_features(fa, fb)
    assert different > 100 and different > 10 * same
    assert kid_from_features(fa, fb)[0] > 20 * abs(kid_from_features(fa, fa2)[0])


def test_image_features_tensor_and_pil_inputs_agree(fid_net):
    ims = [photo(64, 48, seed=0), stripes(64).resize((64, 48))]
    x = image_batch(ims)
    assert x.shape == (2, 3, 48, 64) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.allclose(image_features(x, fid_net), image_features(ims, fid_net), atol=1e-4)
    with pytest.raises(ArtgenError, match=r"\[0, 1\]"):
        image_features(x * 2 - 1, fid_net)
    with pytest.raises(ArtgenError, match="differ in size"):
        image_batch([photo(64, 48), stripes(32)])
    assert image_batch([photo(64, 48), stripes(32)], size=40).shape == (2, 3, 40, 40)


def test_lite0_fid_features_are_the_unfolded_classifiers_pooled_features(fid_net):
    # The FID network folds BatchNorm into the convs and runs channels_last; its features
    # must be those of the plain classifier (timm's layout, BatchNorm kept, contiguous):
    # resize to 224, ImageNet-normalise, pool the last feature map.
    from artgen.eval.metrics import _resize
    from artgen.interop.weights import choose_backbone, read_state_dict
    from artgen.models import backbones
    from artgen.models.backbones import IMAGENET_MEAN, IMAGENET_STD

    assert not any(isinstance(m, nn.BatchNorm2d) for m in fid_net.modules())
    sd = read_state_dict(choose_backbone("efficientnet-lite0", None, instead="").weights, "")
    plain = backbones.efficientnet_lite0_classifier(sd)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        want = plain.forward_features((_resize(x, (224, 224)) - mean) / std).mean((2, 3))
    got = image_features(x, fid_net)
    assert want.abs().max() > 0.5
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_vgg19_fid_network_from_a_weights_file(tmp_path):
    with pytest.raises(ArtgenError, match=VGG19_FILE):
        load_fid_network("vgg19")  # TORCH_HOME is empty in tests
    with pytest.raises(ArtgenError, match="unknown feature network"):
        load_fid_network("inception")
    # Random conv weights under torchvision's key names (the classifier is never read).
    sd, idx, cin = {}, 0, 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M"]:
        if v == "M":
            idx += 1
            continue
        sd[f"features.{idx}.weight"] = torch.randn(v, cin, 3, 3) * (2 / (9 * cin)) ** 0.5
        sd[f"features.{idx}.bias"] = torch.zeros(v)
        cin, idx = v, idx + 2
    for i in range(idx, idx + 8, 2):  # conv5_1 .. conv5_4
        sd[f"features.{i}.weight"] = torch.randn(512, 512, 3, 3) * (2 / (9 * 512)) ** 0.5
        sd[f"features.{i}.bias"] = torch.zeros(512)
    path = tmp_path / VGG19_FILE
    torch.save(sd, path)
    net = load_fid_network("vgg19", weights=path)
    assert net.label.startswith("vgg19") and net.dim == 512
    pools = [m for m in net.modules() if isinstance(m, nn.MaxPool2d | nn.AvgPool2d)]
    assert len(pools) == 4 and all(isinstance(m, nn.MaxPool2d) for m in pools)
    f = image_features(torch.rand(2, 3, 32, 32), net)
    assert f.shape == (2, 512) and torch.isfinite(f).all() and (f >= 0).all()


# --- Intra-cluster diversity -----------------------------------------------------------------


def _abs_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x - y).abs().flatten(1).sum(1)


def test_intra_cluster_diversity_by_hand():
    train = torch.tensor([[0.0], [10.0], [100.0], [-50.0]])
    samples = torch.tensor([[1.0], [2.0], [4.0], [9.0], [12.0], [13.0], [99.0]])
    labels = assign_clusters(samples, train, _abs_distance, batch_size=3)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2]
    # Cluster 0: |1-2|, |1-4|, |2-4| -> mean 2. Cluster 1: 3, 4, 1 -> 8/3.
    # Cluster 2 has one member and cluster 3 none: both are left out.
    got = intra_cluster_diversity(samples, train, _abs_distance, batch_size=2)
    assert got == pytest.approx((2 + 8 / 3) / 2)
    # First two members of each cluster only: |1-2| = 1 and |9-12| = 3.
    assert intra_cluster_diversity(
        samples, train, _abs_distance, max_per_cluster=2
    ) == pytest.approx(2.0)


def test_intra_cluster_diversity_is_zero_for_copies_and_needs_pairs():
    train = torch.tensor([[0.0], [10.0]])
    copies = torch.full((5, 1), 3.0)
    assert intra_cluster_diversity(copies, train, _abs_distance) == 0.0
    with pytest.raises(ArtgenError, match="two or more"):
        intra_cluster_diversity(torch.tensor([[1.0], [9.0]]), train, _abs_distance)
    with pytest.raises(ArtgenError, match="differ in shape"):
        intra_cluster_diversity(torch.zeros(3, 2), train, _abs_distance)


def test_stand_in_distance_is_zero_for_identical_images_and_grows_with_difference(lite0):
    dist = FeatureDistance(lite0)
    base = image_batch([photo(64, 64, seed=0)]) * 2 - 1
    noisy = (base + 0.1 * torch.randn_like(base)).clamp(-1, 1)
    other = image_batch([stripes(64)]) * 2 - 1
    x = torch.cat([base, base, base])
    y = torch.cat([base, noisy, other])
    with torch.no_grad():
        d = dist(x, y)
        back = dist(y, x)
    assert d.shape == (3,)
    assert d[0] == pytest.approx(0.0, abs=1e-6)
    assert 0.05 < d[1] < d[2]
    assert torch.allclose(d, back, atol=1e-5)  # symmetric


def test_load_lpips_offline_gives_the_labelled_stand_in(capsys):
    dist, label = load_lpips()
    assert isinstance(dist, FeatureDistance)
    assert label.startswith("feature-distance stand-in") and "uncalibrated" in label
    assert "not on disk" in label
    assert (
        load_lpips("stand-in")[1]
        == "feature-distance stand-in for LPIPS (EfficientNet-Lite0, uncalibrated)"
    )
    with pytest.raises(ArtgenError, match="unknown LPIPS network"):
        load_lpips("squeeze")
    with pytest.raises(ArtgenError, match="vgg16-397923af.pth") as e:
        load_lpips("vgg")
    assert str(torch_checkpoint_dir()) in str(e.value) and "\n" not in str(e.value)
    assert capsys.readouterr().out == ""  # the library never prints


def test_load_lpips_uses_alexnet_weights_found_in_the_torch_cache(capsys):
    import torchvision

    features = torchvision.models.alexnet(weights=None).features.state_dict()
    sd = {f"features.{k}": v for k, v in features.items()}
    folder = torch_checkpoint_dir()
    folder.mkdir(parents=True)
    torch.save(sd, folder / "alexnet-owt-7be5be79.pth")
    dist, label = load_lpips()  # vgg16 is absent, so auto takes AlexNet
    assert label == "LPIPS v0.1 (AlexNet, calibrated)"
    # The trunk holds the file's weights (not torchvision's download, not random ones).
    assert torch.equal(dist.model.net.slice1[0].weight, sd["features.0.weight"])
    x = image_batch([photo(64, 64, seed=0), photo(64, 64, seed=0)]) * 2 - 1
    y = image_batch([photo(64, 64, seed=0), stripes(64)]) * 2 - 1
    with torch.no_grad():
        d = dist(x, y)
    assert d.shape == (2,) and d[0] == pytest.approx(0.0, abs=1e-6) and d[1] > 0
    assert capsys.readouterr().out == ""


# --- Fairness --------------------------------------------------------------------------------


def test_fairness_discrepancy_values():
    assert fairness_discrepancy([0.5, 0.5]) == pytest.approx(0.0, abs=1e-12)
    assert fairness_discrepancy(torch.full((4,), 0.25)) == pytest.approx(0.0, abs=1e-7)
    assert fairness_discrepancy([0.9, 0.1]) == pytest.approx(math.sqrt(2 * 0.4**2))
    assert fairness_discrepancy([0.9, 0.1]) == pytest.approx(0.5657, abs=1e-4)
    assert fairness_discrepancy({"a": 1.0, "b": 0.0, "c": 0.0}) == pytest.approx(
        math.sqrt(1 - 1 / 3)
    )
    with pytest.raises(ArtgenError, match="sum to 1"):
        fairness_discrepancy([0.5, 0.6])
    with pytest.raises(ArtgenError, match="sum to 1"):
        fairness_discrepancy([1.2, -0.2])


def test_attribute_proportions_counts_every_class():
    values = ["female"] * 9 + ["male"]
    assert attribute_proportions(values) == {"female": 0.9, "male": 0.1}
    props = attribute_proportions(values, classes=["male", "female", "other"])
    assert list(props) == ["male", "female", "other"]
    assert props == {"male": 0.1, "female": 0.9, "other": 0.0}
    assert fairness_discrepancy(attribute_proportions(values)) == pytest.approx(0.5657, abs=1e-4)
    with pytest.raises(ArtgenError, match="not among classes"):
        attribute_proportions(values, classes=["female"])
    with pytest.raises(ArtgenError, match="no attribute values"):
        attribute_proportions([])


def test_misclassification_correction_by_hand():
    # Two classes, TPR 0.8, FPR 0.1: a true share p of class 1 is observed as
    # 0.1 + 0.7 p; 0.45 observed -> p = (0.45 - 0.1) / (0.8 - 0.1) = 0.5.
    c = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert correct_proportions([0.55, 0.45], c) == pytest.approx([0.5, 0.5])
    assert correct_proportions([0.9, 0.1], c) == pytest.approx([1.0, 0.0])  # p = 0
    assert correct_proportions([0.95, 0.05], c) == pytest.approx([1.0, 0.0])  # clipped
    # Three classes: solve observed = C^T p.
    c3 = np.array([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.0, 0.1, 0.9]])
    p = np.array([0.2, 0.3, 0.5])
    assert correct_proportions(c3.T @ p, c3) == pytest.approx(p)
    with pytest.raises(ArtgenError, match="singular"):
        correct_proportions([0.5, 0.5], [[0.5, 0.5], [0.5, 0.5]])


def test_confusion_matrix_counts_rows_by_true_class():
    c = confusion_matrix([0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 0], 2)
    assert c == pytest.approx(np.array([[0.75, 0.25], [0.5, 0.5]]))
    with pytest.raises(ArtgenError, match="no calibration items of class"):
        confusion_matrix([0, 0], [0, 1], 2)


def test_fairness_discrepancy_interval_corrects_and_covers_the_truth():
    rng = np.random.default_rng(0)
    # A classifier with TPR 0.8 and FPR 0.3 on a generator that is truly 50/50: it sees
    # 0.3 + 0.5 * 0.5 = 55 % of class 1 (raw FD 0.071); corrected, FD is near 0.
    tpr, fpr = 0.8, 0.3
    truth = rng.integers(0, 2, 2000)
    called = np.where(truth == 1, rng.random(2000) < tpr, rng.random(2000) < fpr).astype(int)
    cal_true = rng.integers(0, 2, 1000)
    cal_called = np.where(cal_true == 1, rng.random(1000) < tpr, rng.random(1000) < fpr).astype(int)
    r = fairness_discrepancy_interval(called, 2, calibration=(cal_true, cal_called), replicates=300)
    assert r["observed"][1] == pytest.approx(0.55, abs=0.03)
    assert r["fd_raw"] == pytest.approx(math.sqrt(2) * 0.05, abs=0.04)
    assert r["proportions"][1] == pytest.approx(0.5, abs=0.05) and r["fd"] < 0.06
    assert r["low"] <= r["fd"] <= r["high"] < 0.15 and r["std"] > 0
    assert np.asarray(r["confusion"]) == pytest.approx(np.array([[0.7, 0.3], [0.2, 0.8]]), abs=0.05)
    # Without calibration: the raw shares, and an interval from the samples alone.
    raw = fairness_discrepancy_interval(called, 2, replicates=300)
    assert raw["fd"] == raw["fd_raw"] == pytest.approx(r["fd_raw"]) and raw["confusion"] is None
    assert raw["high"] - raw["low"] < r["high"] - r["low"]  # C's uncertainty widens it
    # A fully biased generator (all class 0) through a perfect classifier: FD sqrt(1/2), no spread.
    perfect = fairness_discrepancy_interval([0] * 50, 2, calibration=([0, 1], [0, 1]))
    assert perfect["fd"] == pytest.approx(math.sqrt(0.5)) and perfect["std"] < 1e-12
    with pytest.raises(ArtgenError, match="class indices"):
        fairness_discrepancy_interval([0, 2], 2)
