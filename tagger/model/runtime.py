"""Inference runtimes for scoring: PyTorch (tagger.model.predict) or ONNX Runtime on the CPU.

Where inference runs in fp32 on a CPU (no native bf16), ONNX Runtime runs our EfficientNets
about twice as fast as eager PyTorch (benchmarks/tag_throughput.py: efficientnet_b0 at
224 px, ~150 vs ~71 img/s on 2 threads; its graph optimisations and CPU kernels). `runtime='auto'`
(TagConfig.runtime) takes it on every CPU unless bf16 is asked for explicitly: on a CPU
with AVX512-BF16 (AMD EPYC, 2026-11-28) ONNX Runtime fp32 ran efficientnet_b0 at 111 img/s
against torch bf16's 74, and bf16 changed 1.3% of thresholded decisions (fp32 ONNX: none).
CUDA keeps torch.

The model is exported once per content: `<cache>/<sha256>.onnx`, the key hashing the
weights, the architecture (with its test-time augmentation wrapper, if any), the input shape and the torch/timm versions, so a retrained model
or another image size is a new file and nothing can go stale. The cache is local to the
machine (`$TAGGER_ONNX_CACHE`, default `~/.cache/product-tagger/onnx`), not the lake:
scoring only reads the lake (tag-sharded workers may hold read-only credentials), and an
export takes seconds to a minute (efficientnet_b4) once per machine and model. Files are written atomically (temp file + rename); the most recently
used KEEP_EXPORTS stay.

The exporter is torch's default, torch.export-based one (`dynamo=True`; needs `onnxscript`
and `onnx`), not the deprecated TorchScript one (`dynamo=False`, which needs `onnx` too).

Opening a cached export needs neither torch nor timm (~2 s of imports per process on a
2-core machine): `card_session` finds the export of a model card by a key of the card
alone (its weights' sha256, backbone, test-time augmentation, outputs, input shape and the
installed torch/timm versions), through a small pointer file written next to the export
the first time it is made (`card-<key>.json`). Only a missing or pruned export loads the
model (torch) and exports it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import itertools
import json
import logging
import os
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path

from importlib.metadata import PackageNotFoundError, version as dist_version
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from catalog_schemas.card import ModelCard
from tagger.config import load_settings

if TYPE_CHECKING:  # torch is imported where a model is exported or run, not to open a cached export
    import torch
    from torch import nn

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnx")
EXPORT_FORMAT = 1  # bump when the export changes (opset, names, axes): old files are not reused
INPUT, OUTPUT = "images", "logits"
TOKENS = "tokens"  # int64 [N, max_tokens] of a model that reads text (tagger.data.text)
KEEP_EXPORTS = 8
REQUIRED = ("onnxruntime", "onnxscript", "onnx")  # runtime; torch's exporter needs the other two
_EXPORT_LOCK = threading.Lock()


class RuntimeUnavailable(ValueError):
    """runtime='onnx' was asked for where it cannot run (missing package, CUDA, bf16).
    A ValueError: deterministic, so the flows do not retry it."""


class ExportError(RuntimeUnavailable):
    """torch.onnx.export could not export this model."""


def missing_packages() -> list[str]:
    """The packages ONNX Runtime scoring needs that cannot be imported here."""
    missing = []
    for name in REQUIRED:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def resolve_runtime(runtime: str, device: torch.device | str, precision: str = "auto") -> str:
    """'torch' or 'onnx'. auto: ONNX Runtime on the CPU when precision is auto or fp32 and
    its packages are installed (faster than torch bf16 even on CPUs with native bf16, and
    exact: see the module docstring); torch otherwise (CUDA, an explicit bf16/fp16). A
    forced 'onnx' that cannot run here raises RuntimeUnavailable saying why."""
    if runtime not in RUNTIMES:
        raise ValueError(f"Unknown runtime {runtime!r}; one of {', '.join(RUNTIMES)}.")
    if runtime == "torch":
        return "torch"
    device_type = getattr(device, "type", device)  # a torch.device or its type ('cpu', 'cuda')
    missing = missing_packages()
    if runtime == "onnx":
        if device_type != "cpu":
            raise RuntimeUnavailable(
                f"runtime='onnx' runs on the CPU only, but the device is {device_type}: "
                "use runtime 'torch' or 'auto' (auto takes torch on CUDA).")
        if precision not in ("auto", "fp32"):
            raise RuntimeUnavailable(
                f"runtime='onnx' computes in fp32, but precision={precision!r} was asked for: "
                "use precision 'fp32'/'auto', or runtime 'torch' for bf16/fp16.")
        if missing:
            raise RuntimeUnavailable(
                f"runtime='onnx' needs {', '.join(missing)}, which cannot be imported here: "
                f"pip install {' '.join(missing)} (or use runtime 'torch' or 'auto').")
        return "onnx"
    if device_type == "cpu" and precision in ("auto", "fp32") and not missing:
        return "onnx"
    return "torch"


def cache_dir() -> Path:
    """Where exports live: $TAGGER_ONNX_CACHE (Settings.onnx_cache), else
    ($XDG_CACHE_HOME or ~/.cache)/product-tagger/onnx; the system temp folder when that
    cannot be created."""
    configured = load_settings().onnx_cache
    # XDG_CACHE_HOME is the desktop's convention, not a TAGGER_* setting: read where it lives.
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    base = Path(configured) if configured else xdg / "product-tagger" / "onnx"
    try:
        base.mkdir(parents=True, exist_ok=True)
        return base
    except OSError as e:
        fallback = Path(tempfile.gettempdir()) / "product-tagger-onnx"
        log.warning("ONNX cache %s is not writable (%s); using %s", base, e, fallback)
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def _exported(model: nn.Module) -> nn.Module:
    """The module an export runs: DDP / torch.compile wrappers removed, inside and outside a
    test-time augmentation wrapper, which stays (it is part of what the export computes)."""
    from tagger.model.device import unwrap
    from tagger.model.factory import FlipTTA

    m = unwrap(model)
    return FlipTTA(unwrap(m.model)) if isinstance(m, FlipTTA) else m


def _architecture(m: nn.Module) -> str:
    """The class of the model, and of the model inside a TTA wrapper: `FlipTTA(EfficientNet)`;
    a model that reads text adds its text config. A plain model's is its class alone, so its
    exports keep their keys."""
    from tagger.model.factory import FlipTTA
    from tagger.model.text import ImageTextModel

    name = f"{type(m).__module__}.{type(m).__qualname__}"
    if isinstance(m, ImageTextModel):
        name += f"[{m.text_config.model_dump_json()}]"
    return f"{name}({_architecture(m.model)})" if isinstance(m, FlipTTA) else name


def session_feed(session, images: np.ndarray, tokens: np.ndarray | None) -> dict[str, np.ndarray]:
    """The inputs of one run of `session`, by the names the export declares: a text-only
    model's export has no image input (the exporter drops an unused one)."""
    names = {i.name for i in session.get_inputs()}
    if TOKENS in names and tokens is None:
        raise ValueError("this model reads the product's text, but no tokens were given")
    feed = {INPUT: images} if INPUT in names else {}
    if TOKENS in names:
        feed[TOKENS] = np.ascontiguousarray(tokens, dtype=np.int64)
    return feed


def export_key(model: nn.Module, input_shape: tuple[int, ...]) -> str:
    """sha256 of what the export depends on: weights (any memory format), architecture,
    test-time augmentation, input shape (C, H, W), torch and timm versions, EXPORT_FORMAT."""
    import timm
    import torch

    m = _exported(model)
    h = hashlib.sha256(json.dumps([
        EXPORT_FORMAT, torch.__version__, timm.__version__, _architecture(m), list(input_shape),
    ]).encode())
    state = m.state_dict()
    # buffers kept out of the weights file (a fused model's image_weight, set from its card)
    # change the graph's constants too
    state.update((f"{name}(not persistent)", b) for name, b in m.named_buffers() if name not in state)
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _plain_copy(model: nn.Module) -> nn.Module:
    """An fp32 CPU copy in eval mode with ordinary tensors: a model that went through
    predict_scores holds inference-mode tensors (channels_last conversion under
    inference_mode), which torch.export refuses."""
    import torch

    m = copy.deepcopy(_exported(model)).cpu().float().eval()
    for t in itertools.chain(m.parameters(), m.buffers()):
        t.data = t.data.clone(memory_format=torch.contiguous_format)
    return m.requires_grad_(False)


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], directory: Path | None = None) -> Path:
    """The model as ONNX (dynamic batch axis, input 'images' [N, C, H, W] float32, output
    'logits' [N, K]), exported unless this content is in the cache already."""
    directory = Path(directory) if directory is not None else cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    key = export_key(model, input_shape)
    path = directory / f"{key}.onnx"
    with _EXPORT_LOCK:  # torch.export is not thread-safe (Prefect runs tasks in threads)
        if path.exists():
            os.utime(path)  # recently used: pruning keeps it
            log.debug("ONNX export %s reused", path)
            return path
        return _export(model, input_shape, directory, key, path)


def _export(model, input_shape, directory: Path, key: str, path: Path) -> Path:
    missing = [p for p in ("onnxscript", "onnx") if p in missing_packages()]
    if missing:
        raise RuntimeUnavailable(f"Exporting to ONNX needs {', '.join(missing)}: pip install {' '.join(missing)}")
    import torch

    t0 = time.perf_counter()
    tmp = directory / f".{key}.{uuid.uuid4().hex[:8]}.tmp"
    args, names = (torch.zeros(2, *input_shape),), [INPUT]
    from tagger.model.text import text_config_of

    text = text_config_of(_exported(model))
    if text is not None:  # ids 1..: an all-padding example could be folded away
        args, names = args + (torch.ones(2, text.max_tokens, dtype=torch.int64),), names + [TOKENS]
    batch = torch.export.Dim("batch")
    try:
        with torch.inference_mode(False), warnings.catch_warnings(), _quiet_exporter():
            warnings.simplefilter("ignore")  # the exporter's tracing chatter
            torch.onnx.export(
                _plain_copy(model), args, str(tmp),
                input_names=names, output_names=[OUTPUT], dynamo=True, verbose=False,
                external_data=False, dynamic_shapes=tuple({0: batch} for _ in args),
            )
        os.replace(tmp, path)
    except Exception as e:
        raise ExportError(f"Could not export {type(_exported(model)).__name__} to ONNX: "
                          f"{type(e).__name__}: {str(e)[:500]}") from e
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported the model to ONNX in %.1fs: %s (%.1f MB)", time.perf_counter() - t0, path,
             path.stat().st_size / 1e6)
    _prune(directory)
    return path


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's passes log a dozen INFO lines per export: WARNING and up only, unless
    we are debugging."""
    loggers = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    if not log.isEnabledFor(logging.DEBUG):
        for lg in loggers:
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _prune(directory: Path, keep: int = KEEP_EXPORTS) -> None:
    files = sorted(directory.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[keep:]:
        old.unlink(missing_ok=True)


@functools.lru_cache(maxsize=4)
def _open_session(path: str, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def onnx_session(model: nn.Module, input_shape: tuple[int, ...], *, threads: int | None = None,
                 directory: Path | None = None):
    """An onnxruntime InferenceSession of the model (exported or taken from the cache),
    intra-op threads = torch.get_num_threads() unless given; sessions are reused."""
    import torch

    if missing_packages():
        resolve_runtime("onnx", "cpu")  # raises, saying what is missing
    path = export_onnx(model, tuple(input_shape), directory)
    return _open_session(str(path), threads or torch.get_num_threads())


def card_key(card: ModelCard, input_shape: tuple[int, ...]) -> str | None:
    """sha256 of what a card's export depends on, from the card alone (no torch): its
    weights' sha256, backbone, test-time augmentation, outputs, the input shape and the
    installed torch and timm versions (read from package metadata, not imported). None for
    a card without a weights digest: its export is found by loading the model."""
    if not card.weights_sha256:
        return None
    try:
        versions = [dist_version("torch"), dist_version("timm")]
    except PackageNotFoundError:
        return None
    reads = [] if not card.reads_text else [card.inputs, card.text.model_dump(mode="json")]
    return hashlib.sha256(json.dumps([
        EXPORT_FORMAT, card.weights_sha256, card.backbone, card.timm_name, card.tta,
        card.taxonomy.num_outputs,
        list(input_shape), *versions, *reads,
    ]).encode()).hexdigest()


def _pointer(directory: Path, key: str) -> Path:
    return directory / f"card-{key}.json"


def cached_card_export(card: ModelCard, input_shape: tuple[int, ...],
                       directory: Path | None = None) -> Path | None:
    """The cached export of this card's model, found without loading it; None when there is
    none yet (or it was pruned)."""
    key = card_key(card, input_shape)
    if key is None:
        return None
    directory = Path(directory) if directory is not None else cache_dir()
    try:
        name = json.loads(_pointer(directory, key).read_text())["export"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    path = directory / Path(name).name
    if not path.exists():
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: pruning keeps it
    return path


def card_session(card: ModelCard, input_shape: tuple[int, ...], load_model, *,
                 threads: int | None = None, directory: Path | None = None):
    """An onnxruntime session of the card's model: from the cache when the card's export is
    there (no torch import), else `load_model()` (-> the torch model) is exported first and
    a pointer from the card's key to the export is written for the next process.
    Threads: `threads`, else $OMP_NUM_THREADS, else ONNX Runtime's own default (the
    physical cores)."""
    if missing_packages():
        resolve_runtime("onnx", "cpu")  # raises, saying what is missing
    directory = Path(directory) if directory is not None else cache_dir()
    threads = threads or _env_threads()
    path = cached_card_export(card, input_shape, directory)
    if path is None:
        path = export_onnx(load_model(), tuple(input_shape), directory)
        key = card_key(card, input_shape)
        if key is not None:
            pointer = _pointer(directory, key)
            tmp = pointer.with_name(f".{pointer.name}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_text(json.dumps({"export": path.name, "model_version": card.version}))
            os.replace(tmp, pointer)
    return _open_session(str(path), threads)


def _env_threads() -> int:
    """Intra-op threads without asking torch: OMP_NUM_THREADS where set, else 0 (ONNX
    Runtime's default: one per physical core, what torch.get_num_threads() gives too)."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


def predict_scores_onnx(model: nn.Module, loader, *, logits: bool = False, desc: str = "predict",
                        threads: int | None = None, directory: Path | None = None,
                        normalize=None) -> np.ndarray:
    """tagger.model.predict.predict_scores on ONNX Runtime (fp32, CPU): float32 [N, K] sigmoid
    scores (raw logits with `logits`), rows in dataset order (the loader must not shuffle).
    uint8 batches need `normalize` (a BatchNormalize; its buffer is reused batch to batch).
    Export or session problems raise before the first batch is scored."""
    import torch

    from tagger.data.transforms import model_inputs

    n = len(loader.dataset)
    out: np.ndarray | None = None
    session = None
    t0, done = time.perf_counter(), 0
    cpu = torch.device("cpu")
    for batch in tqdm(loader, desc=desc, unit="batch", disable=None, leave=False):
        x = batch[0]
        x, *text = model_inputs(x if isinstance(x, (torch.Tensor, list, tuple)) else torch.as_tensor(x),
                                normalize, cpu)
        if session is None:
            session = onnx_session(model, tuple(x.shape[1:]), threads=threads, directory=directory)
        raw = session.run([OUTPUT], session_feed(session, np.ascontiguousarray(x.numpy(), dtype=np.float32),
                                                 text[0].numpy() if text else None))[0]
        scores = raw if logits else torch.sigmoid(torch.from_numpy(raw)).numpy()  # as predict_scores
        if out is None:
            out = np.empty((n, scores.shape[1]), dtype=np.float32)
        out[done:done + len(scores)] = scores
        done += len(scores)
    seconds = time.perf_counter() - t0
    log.info("%s: %d images in %.1fs (%.0f img/s, onnxruntime fp32, %d threads)", desc, done,
             seconds, done / max(seconds, 1e-9), threads or torch.get_num_threads())
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def predict_with_runtime(model: nn.Module, loader, device: torch.device, *, runtime: str = "auto",
                         precision: str | None = "auto", desc: str = "predict",
                         logits: bool = False, normalize=None) -> np.ndarray:
    """Scores (or logits) with the runtime `runtime` resolves to: predict_scores_onnx or
    tagger.model.predict.predict_scores. Under auto, a model the exporter cannot handle is scored
    with torch (warning); a forced 'onnx' raises."""
    from tagger.model.predict import predict_scores

    if resolve_runtime(runtime, device, precision or "auto") == "onnx":
        try:
            return predict_scores_onnx(model, loader, logits=logits, desc=desc, normalize=normalize)
        except ExportError as e:
            if runtime == "onnx":
                raise
            log.warning("%s; scoring with torch instead", e)
    return predict_scores(model, loader, device, precision=precision, desc=desc, logits=logits,
                          normalize=normalize)
