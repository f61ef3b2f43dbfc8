"""ONNX Runtime scoring (tagger/model/runtime.py): same scores and decisions as torch fp32, the
choice under runtime=auto, forcing, a missing onnxruntime, and the export cache."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tagger.model import runtime
from tagger.model.factory import create_model
from tagger.model.predict import predict_scores
from tagger.model.runtime import (
    ExportError,
    RuntimeUnavailable,
    export_onnx,
    onnx_session,
    predict_scores_onnx,
    predict_with_runtime,
    resolve_runtime,
)

# The stated tolerance: ONNX Runtime and torch fp32 compute the same graph with different
# kernels (fused conv + activation, other summation orders), so scores differ by float32
# rounding, well below 1e-4 (measured ~1e-7 on these models). A thresholded decision can
# only differ where a score lies within that distance of its threshold.
SCORE_TOL = 1e-4
CPU = torch.device("cpu")
K = 12


@pytest.fixture(autouse=True)
def _private_onnx_cache(onnx_cache):
    """Every export of these tests goes to the private cache (tests/model/conftest.py)."""


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("test_efficientnet", K).eval()
    with torch.no_grad():  # a random head gives scores spread over (0, 1), not all ~0.5
        m.get_classifier().weight.mul_(100)
    return m


def _loader(n: int = 33, size: int = 48, batch: int = 16) -> DataLoader:
    """Batches of 16, 16 and 1 image (the dynamic batch axis, down to one)."""
    g = torch.Generator().manual_seed(1)
    images = (torch.rand(n, 3, size, size, generator=g) - 0.5) / 0.25
    return DataLoader(TensorDataset(images, torch.zeros(n)), batch_size=batch)


def _count_exports(monkeypatch) -> list:
    calls = []
    real = torch.onnx.export

    def spy(*a, **kw):
        calls.append(a[0])
        return real(*a, **kw)

    monkeypatch.setattr(torch.onnx, "export", spy)
    return calls


def test_onnx_scores_match_torch_fp32_and_decisions_agree(model):
    loader = _loader()
    # torch first: predict_scores leaves the model channels_last with inference tensors,
    # which the export must cope with (it exports a plain copy)
    ref = predict_scores(model, loader, CPU, precision="fp32")
    ref_logits = predict_scores(model, loader, CPU, precision="fp32", logits=True)
    scores = predict_scores_onnx(model, loader)
    logits = predict_scores_onnx(model, loader, logits=True)
    assert scores.shape == ref.shape == (33, K) and scores.dtype == np.float32
    assert np.abs(scores - ref).max() < SCORE_TOL
    assert np.abs(logits - ref_logits).max() < 4 * SCORE_TOL  # sigmoid' <= 1/4
    assert 0.05 < ref.std()  # the comparison is not between constants

    rng = np.random.default_rng(0)
    for thresholds in (np.full(K, 0.5), np.array([np.quantile(ref[:, k], rng.uniform(0.2, 0.8))
                                                  for k in range(K)])):
        flipped = (ref >= thresholds) != (scores >= thresholds)
        assert np.all(np.abs(ref - thresholds)[flipped] < SCORE_TOL)
        assert 1 - flipped.mean() >= 0.995


def test_auto_picks_onnx_on_any_cpu_unless_bf16_is_asked_for(monkeypatch):
    assert resolve_runtime("auto", CPU) == "onnx"  # this machine
    monkeypatch.setattr("tagger.model.device.cpu_has_native_bf16", lambda: False)
    assert resolve_runtime("auto", CPU) == "onnx"
    assert resolve_runtime("auto", CPU, "fp32") == "onnx"
    assert resolve_runtime("auto", CPU, "bf16") == "torch"  # asked for bf16: torch does it
    assert resolve_runtime("auto", torch.device("cuda")) == "torch"
    monkeypatch.setattr("tagger.model.device.cpu_has_native_bf16", lambda: True)
    assert resolve_runtime("auto", CPU) == "onnx"  # AVX512-BF16 too: ORT fp32 was faster, exact
    assert resolve_runtime("auto", CPU, "fp32") == "onnx"
    assert resolve_runtime("auto", CPU, "bf16") == "torch"
    with pytest.raises(ValueError, match="Unknown runtime"):
        resolve_runtime("tensorrt", CPU)


def test_forced_runtimes(model, onnx_cache, monkeypatch):
    exports = _count_exports(monkeypatch)
    loader = _loader(n=8)
    assert resolve_runtime("torch", CPU) == "torch"
    forced = predict_with_runtime(model, loader, CPU, runtime="torch", precision="fp32")
    assert np.array_equal(forced, predict_scores(model, loader, CPU, precision="fp32"))
    assert not exports and not list(onnx_cache.glob("*.onnx"))  # torch means no export
    assert resolve_runtime("onnx", CPU) == "onnx"
    with pytest.raises(RuntimeUnavailable, match="CPU only"):
        resolve_runtime("onnx", torch.device("cuda"))
    with pytest.raises(RuntimeUnavailable, match="fp32"):
        resolve_runtime("onnx", CPU, "bf16")


def test_missing_onnxruntime_is_a_clear_error_when_forced_and_torch_under_auto(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
    assert runtime.missing_packages() == ["onnxruntime"]
    with pytest.raises(RuntimeUnavailable, match="needs onnxruntime.*pip install onnxruntime"):
        resolve_runtime("onnx", CPU)
    with pytest.raises(RuntimeUnavailable, match="pip install onnxruntime"):
        predict_with_runtime(model, _loader(n=4), CPU, runtime="onnx")
    assert resolve_runtime("auto", CPU) == "torch"
    loader = _loader(n=4)
    assert np.array_equal(predict_with_runtime(model, loader, CPU, runtime="auto"),
                          predict_scores(model, loader, CPU, precision="auto"))


def test_export_is_reused_and_redone_when_the_weights_change(model, onnx_cache, monkeypatch):
    exports = _count_exports(monkeypatch)
    first = export_onnx(model, (3, 48, 48))
    assert first.parent == onnx_cache and len(exports) == 1
    assert export_onnx(model, (3, 48, 48)) == first and len(exports) == 1  # reused
    session = onnx_session(model, (3, 48, 48))
    assert onnx_session(model, (3, 48, 48)) is session and len(exports) == 1
    runtime._open_session.cache_clear()  # as in a new process: the file on disk is reused
    assert onnx_session(model, (3, 48, 48)) is not session and len(exports) == 1
    assert [i.shape for i in session.get_inputs()] == [["batch", 3, 48, 48]]
    assert not list(onnx_cache.glob(".*"))  # no temp file left behind

    changed = create_model("test_efficientnet", K).eval()
    changed.load_state_dict(model.state_dict())
    assert export_onnx(changed, (3, 48, 48)) == first  # same weights, another object
    with torch.no_grad():
        changed.get_classifier().bias.add_(1.0)
    second = export_onnx(changed, (3, 48, 48))
    assert second != first and len(exports) == 2  # new weights: exported again
    x = _loader(n=4)
    assert np.abs(predict_scores_onnx(changed, x) - predict_scores(changed, x, CPU, precision="fp32")).max() < SCORE_TOL
    assert sorted(onnx_cache.glob("*.onnx")) == sorted([first, second])
    assert runtime.export_key(changed, (3, 64, 64)) != runtime.export_key(changed, (3, 48, 48))


def test_auto_falls_back_to_torch_when_the_export_fails(model, monkeypatch):
    def broken(*a, **kw):
        raise RuntimeError("unsupported operator aten::frobnicate")

    monkeypatch.setattr(torch.onnx, "export", broken)
    loader = _loader(n=4)
    assert np.array_equal(predict_with_runtime(model, loader, CPU, runtime="auto", precision="fp32"),
                          predict_scores(model, loader, CPU, precision="fp32"))
    with pytest.raises(ExportError, match="frobnicate"):
        predict_with_runtime(model, loader, CPU, runtime="onnx")


def test_tag_config_runtime_field():
    from pydantic import ValidationError

    from tagger.config import TagConfig

    assert TagConfig().runtime == "auto" and TagConfig(runtime="onnx").runtime == "onnx"
    with pytest.raises(ValidationError):
        TagConfig(runtime="tensorrt")


@pytest.mark.slow
def test_tag_rows_with_onnx_runtime_match_torch(trained_lake, monkeypatch):
    """score_products through TagConfig.runtime: the same tag rows, scores within SCORE_TOL."""
    from tagger.config import TagConfig
    from tagger.tag.run import plan_tagging, score_products

    lake, version = trained_lake
    ids = plan_tagging(str(lake), model_version=version, full=True).product_ids
    rows = {rt: score_products(str(lake), version, ids, TagConfig(runtime=rt, precision="fp32", workers=0))
            for rt in ("torch", "onnx")}
    fixed = [c for c in rows["torch"] if c != "score"]
    assert len(rows["torch"]["product_id"]) > 0
    assert {c: rows["onnx"][c] for c in fixed} == {c: rows["torch"][c] for c in fixed}
    model_scores = [(a, b) for a, b in zip(rows["onnx"]["score"], rows["torch"]["score"]) if a is not None]
    assert model_scores and max(abs(a - b) for a, b in model_scores) < SCORE_TOL

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(RuntimeUnavailable, match="pip install onnxruntime"):
        score_products(str(lake), version, ids, TagConfig(runtime="onnx", workers=0))


def test_cli_runtime_flag(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import tagger.tag.run
    from tagger.cli import main

    seen = []
    monkeypatch.setattr(tagger.tag.run, "tag_catalog",
                        lambda lake, **kw: seen.append(kw["config"]) or SimpleNamespace(to_dict=dict))
    assert main(["tag", "--lake", str(tmp_path), "--runtime", "torch"]) == 0
    assert main(["tag", "--lake", str(tmp_path)]) == 0
    assert [c.runtime for c in seen] == ["torch", "auto"]
