import shutil

import pytest
import torch
from PIL import Image

from artgen.core.errors import ArtgenError
from artgen.core.images import load_image, to_tensor
from artgen.interop.weights import (
    VGG19_FILE,
    choose_backbone,
    efficientnet_lite0_path,
    fetch_vgg19,
    load_backbone,
    read_state_dict,
    torch_checkpoint_dir,
)
from artgen.models.backbones import IMAGENET_MEAN, IMAGENET_STD, efficientnet_lite0_classifier

from .conftest import REPO


def _classify(path) -> list[int]:
    net = efficientnet_lite0_classifier(read_state_dict(efficientnet_lite0_path(), ""))
    im = load_image(path).rgb
    w, h = im.size
    s = 256 / min(w, h)
    im = im.resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC)
    w, h = im.size
    left, top = (w - 224) // 2, (h - 224) // 2
    x = to_tensor(im.crop((left, top, left + 224, top + 224)))
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        return net(x).topk(3).indices[0].tolist()


def test_real_efficientnet_lite0_weights_classify_known_images():
    # ImageNet classes: 281 tabby cat, 282 tiger cat, 285 Egyptian cat; 967 espresso.
    assert _classify(REPO / "styles/examples/chelsea.jpg")[0] in (281, 282, 285)
    assert _classify(REPO / "styles/examples/coffee.jpg")[0] == 967


def test_auto_picks_efficientnet_when_vgg_is_absent():
    choice = choose_backbone("auto")
    assert choice.name == "efficientnet-lite0"
    assert "artgen weights fetch vgg19" in choice.note


def test_missing_vgg_gives_one_clear_line():
    with pytest.raises(ArtgenError) as e:
        choose_backbone("vgg19")
    msg = str(e.value)
    assert VGG19_FILE in msg and str(torch_checkpoint_dir()) in msg
    assert "artgen weights fetch vgg19" in msg and "\n" not in msg


def test_vgg19_from_torch_hub_cache_through_the_real_loading_code(vgg_file):
    dest = torch_checkpoint_dir()
    dest.mkdir(parents=True)
    shutil.copy(vgg_file, dest / VGG19_FILE)
    choice = choose_backbone("auto")
    assert choice.name == "vgg19" and choice.weights == dest / VGG19_FILE
    ext = load_backbone(choice)
    # The loaded conv weights are the file's (features.0 is conv1_1, features.34 is conv5_4).
    sd = torch.load(vgg_file, weights_only=True)
    assert torch.equal(ext.stages["conv1_1"].weight, sd["features.0.weight"])
    assert torch.equal(ext.stages["conv5_1"].weight, sd["features.28.weight"])
    feats = ext(torch.rand(1, 3, 64, 64), ["relu1_1", "relu4_2", "relu5_1"])
    assert feats["relu4_2"].shape == (1, 512, 8, 8) and feats["relu5_1"].shape == (1, 512, 4, 4)


def test_vgg19_from_env_and_explicit_path(vgg_file, monkeypatch):
    monkeypatch.setenv("ARTGEN_VGG19_WEIGHTS", str(vgg_file))
    assert choose_backbone("vgg19").weights == vgg_file
    monkeypatch.delenv("ARTGEN_VGG19_WEIGHTS")
    assert choose_backbone("vgg19", vgg_file).weights == vgg_file


def test_corrupt_weights_name_the_file_and_the_fix(tmp_path):
    bad = tmp_path / VGG19_FILE
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ArtgenError) as e:
        load_backbone(choose_backbone("vgg19", bad))
    msg = str(e.value)
    assert str(bad) in msg and "corrupt" in msg and "artgen weights fetch vgg19" in msg
    # torch's reason is quoted whole, or cut at a word with an ellipsis (not mid-word).
    reason = msg.split("corrupt or not a weights file (", 1)[1].rsplit("); ", 1)[0]
    assert len(reason) <= 120 and (reason.endswith("…") or len(reason) < 119), reason
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, wrong)
    with pytest.raises(ArtgenError, match="not torchvision VGG19 weights"):
        load_backbone(choose_backbone("vgg19", wrong))


def test_pickled_code_is_never_run(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('ran code from a weights file')",))

    p = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, p)
    with pytest.raises(ArtgenError, match="corrupt or not a weights file"):
        read_state_dict(p, "fix")


def test_fetch_checks_the_hash_and_writes_atomically(tmp_path, vgg_file):
    url = vgg_file.as_uri()
    with pytest.raises(ArtgenError, match="corrupt: sha256"):
        fetch_vgg19(tmp_path / "a", url=url)  # a random VGG does not have the real hash
    assert list((tmp_path / "a").iterdir()) == []  # nothing half-written left behind
    with pytest.raises(ArtgenError, match="could not download"):
        fetch_vgg19(tmp_path / "b", url=(tmp_path / "nowhere.pth").as_uri())


def test_batchnorm_folding_keeps_the_features():
    from artgen.models.backbones import efficientnet_lite0

    sd = read_state_dict(efficientnet_lite0_path(), "")
    folded, plain = efficientnet_lite0(sd), efficientnet_lite0(sd, fold_bn=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        a, b = folded(x, folded.stage_names), plain(x, plain.stage_names)
    for k in folded.stage_names:
        assert torch.allclose(a[k], b[k], atol=1e-3, rtol=1e-3), k


def test_clip_cuts_at_a_word_and_keeps_one_line():
    from artgen.core.errors import clip

    assert clip("short text") == "short text"
    text = "Invalid magic number; corrupt file? " * 10 + "\nsecond line"
    cut = clip(text, 50)
    assert len(cut) <= 50 and cut.endswith("…") and "\n" not in cut
    assert text.startswith(cut[:-1]) and text[len(cut) - 1] in " ;?"  # ends on a word boundary
    assert len(clip("x" * 10_000_000, 200)) == 200  # a huge value is not walked whole


def test_lite0_built_here_is_timms_model_output_for_output():
    # artgen builds EfficientNet-Lite0 itself (importing timm costs ~3 s of start-up);
    # timm's model is the reference: the same keys in the same order, the same outputs.
    import timm

    from artgen.models.backbones import efficientnet_lite0

    sd = read_state_dict(efficientnet_lite0_path(), "")
    ours = efficientnet_lite0_classifier(sd)
    ref = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    ref.load_state_dict({k: v for k, v in zip(ref.state_dict(), sd.values(), strict=True)})
    assert list(ours.state_dict()) == list(ref.state_dict())
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-4)
        feats = efficientnet_lite0(sd, fold_bn=False)(x, ["block3_2"])["block3_2"]
        h = ref.bn1(
            ref.conv_stem(
                (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
                / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
            )
        )
        h = ref.blocks[3](ref.blocks[2](ref.blocks[1](ref.blocks[0](h))))
        assert torch.allclose(feats, h, atol=1e-5)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            {"levels": ["block1_1", "block2_1", "nope"]},
            "unknown layer 'nope' of efficientnet-lite0",
        ),
        ({"style_layers": ["stem", "relu4_1"]}, "unknown layer 'relu4_1'"),
        ({"style_layers": [["stem"]]}, "unknown layer 'list'"),
        ({"levels": "block1_1"}, "levels must be a list"),
        ({"level_channels": [24, 40, 81]}, "level block3_2 has 80 channels, not 81"),
        ({"widths": [64] * 100}, "widths must be a list of at most 8 entries"),
        ({"levels": [], "level_channels": [], "widths": []}, "are empty"),
    ],
)
def test_an_adain_model_config_naming_unknown_layers_is_one_line(tmp_path, capsys, edit, message):
    """issue 34: layer names a network does not have were a KeyError from deep inside the
    encoder; channel counts that are not the layer's failed only when stylising."""
    import json
    from pathlib import Path

    from artgen.cli import main
    from artgen.interop.weights import ADAIN_SHIPPED, load_adain

    from .conftest import one_line_error, photo

    model = Path(shutil.copytree(ADAIN_SHIPPED, tmp_path / "model"))
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(ArtgenError, match=message) as e:
        load_adain(str(model))
    assert str(model / "config.json") in str(e.value) and "\n" not in str(e.value)
    photo().save(tmp_path / "p.png")
    photo(seed=1).save(tmp_path / "s.png")
    argv = ["stylize", str(tmp_path / "p.png"), "--style", str(tmp_path / "s.png")]
    rc = main([*argv, "--method", "adain", "--model", str(model), "-o", str(tmp_path / "o.png")])
    one_line_error(capsys, rc, str(model / "config.json"), message.split("'")[0])
