import pytest
import timm
import torch

from tagger.cli import main
from tagger.model.factory import create_model
from tagger.model.weights import WeightsError
from tagger.model.weights import compute_mapped_state_dict


def _foreign(sd: dict) -> dict:
    """The same tensors under another framework's names, without BN counters."""
    return {f"_layer{i}.param": v.clone() for i, (k, v) in enumerate(sd.items())
            if not k.endswith("num_batches_tracked")}


def test_checkpoint_with_other_names_maps_in_order(tmp_path, capsys):
    ref = timm.create_model("test_efficientnet").state_dict()
    torch.save(_foreign(ref), tmp_path / "foreign.pth")
    assert main(["convert-weights", str(tmp_path / "foreign.pth"), "--backbone", "test_efficientnet",
                 "--out", str(tmp_path / "w.safetensors")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "w.safetensors")
    model = create_model("test_efficientnet", 4, weights=str(tmp_path / "w.safetensors"))
    got = model.state_dict()
    for k, v in ref.items():
        if not k.startswith("classifier") and not k.endswith("num_batches_tracked"):
            assert torch.equal(got[k], v), k


def test_other_architecture_is_refused():
    ref = timm.create_model("resnet18").state_dict()
    with pytest.raises(WeightsError, match="not the same architecture"):
        compute_mapped_state_dict(_foreign(ref), "test_efficientnet")


def test_swapped_order_is_refused():
    items = list(_foreign(timm.create_model("test_efficientnet").state_dict()).items())
    items[0], items[5] = items[5], items[0]
    with pytest.raises(WeightsError, match="Tensor 0"):
        compute_mapped_state_dict(dict(items), "test_efficientnet")
