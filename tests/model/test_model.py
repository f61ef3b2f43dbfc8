import pytest
import torch
from safetensors.torch import save_file

from tagger.backbones import BACKBONES, get_backbone
from tagger.model.factory import create_model
from tagger.model.weights import WeightsError, load_weights, read_state_dict, save_weights


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_registered_backbone_builds_and_runs(name):
    model = create_model(name, 7, pretrained=False).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last))
    assert out.shape == (2, 7)


def test_unknown_backbone_lists_known():
    with pytest.raises(ValueError, match="Unknown backbone 'effnet_b4'. Known: efficientnet_b4"):
        get_backbone("effnet_b4")


def test_save_load_round_trip_and_mismatch(tmp_path):
    a = create_model("test_efficientnet", 5)
    save_weights(a, tmp_path / "m.safetensors")
    b = load_weights(create_model("test_efficientnet", 5), tmp_path / "m.safetensors")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    with pytest.raises(WeightsError, match=r"shape \(5, 256\).*expects \(6, 256\) \(wrong taxonomy or backbone"):
        load_weights(create_model("test_efficientnet", 6), tmp_path / "m.safetensors")


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "wrapped"])
def test_backbone_weights_from_file_replace_the_classifier(tmp_path, fmt):
    """`--weights` starts from an ImageNet-style checkpoint (1000 classes) and gets a new head."""
    import timm

    src = timm.create_model("test_efficientnet", num_classes=1000)
    sd = src.state_dict()
    path = tmp_path / f"w.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}} if fmt == "wrapped" else sd, path)
    model = create_model("test_efficientnet", 9, weights=str(path))
    got = model.state_dict()
    assert got["classifier.weight"].shape == (9, sd["classifier.weight"].shape[1])
    assert all(torch.equal(got[k], v) for k, v in sd.items() if not k.startswith("classifier"))


def test_weights_never_execute_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="Cannot read"):
        read_state_dict(tmp_path / "evil.pth")


def test_weights_that_do_not_fit_the_backbone(tmp_path):
    import timm

    sd = timm.create_model("resnet18", num_classes=10).state_dict()
    save_file(sd, str(tmp_path / "resnet.safetensors"))
    with pytest.raises(WeightsError, match="do not fit backbone 'test_efficientnet'"):
        create_model("test_efficientnet", 3, weights=str(tmp_path / "resnet.safetensors"))
    with pytest.raises(FileNotFoundError):
        create_model("test_efficientnet", 3, weights=str(tmp_path / "missing.safetensors"))
