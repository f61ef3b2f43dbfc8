import pytest


@pytest.fixture
def onnx_cache(tmp_path, monkeypatch):
    """A private ONNX export cache for the test, not ~/.cache."""
    monkeypatch.setenv("TAGGER_ONNX_CACHE", str(tmp_path / "onnx-cache"))
    return tmp_path / "onnx-cache"
