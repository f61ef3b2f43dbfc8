"""A pretrained text encoder from PyPI beside TF-IDF: do its embeddings read the titles better?

WordLlama (PyPI `wordllama`) ships a 256-dim embedding per token of Llama 2's 32k-token
vocabulary, and the tokenizer, inside the wheel, so nothing is downloaded: the kind of
pretrained text encoder this project can use offline. A title's
features are the mean of its token embeddings, L2-normalised. They go into the quality
benchmark's own per-attribute logistic regression (`linear_text_baseline`: C chosen on
validation, scored on the test export with compute_evaluation), alone and next to the
TF-IDF features, on the lake that `benchmarks/quality.py --workdir WORKDIR` keeps. A linear
model on the same split is the cheap screen for the fused model's text branch: embeddings
that add nothing to TF-IDF here would add nothing to the hashed n-grams there either.

    .venv/bin/python -m benchmarks.text_encoders --workdir /var/tmp/bq27
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.quality import linear_text_baseline, tfidf_features  # noqa: E402
from tagger.config import TrainConfig  # noqa: E402
from tagger.io.storage import open_storage  # noqa: E402
from tagger.lake import EVALUATIONS, PRODUCTS_PATH  # noqa: E402


class WordLlamaEncoder:
    """Titles -> float32 [N, 256]: the mean of their WordLlama token embeddings (the
    tokenizer's special tokens left out), L2-normalised; zeros for a title with no token."""

    def __init__(self):
        try:
            from safetensors.numpy import load_file
            from tokenizers import Tokenizer
            package = importlib.resources.files("wordllama")
        except ImportError as e:
            raise SystemExit(f"{e}: pip install wordllama (it is in the dev extra)") from None
        # The files in the wheel: WordLlama.load() looks for the tokenizer in a cache and
        # downloads it from the hub, which fails offline.
        self.table = load_file(str(package / "weights/l2_supercat_256.safetensors"))["embedding.weight"]
        self.table = self.table.astype(np.float32)
        self.tokenizer = Tokenizer.from_file(str(package / "tokenizers/l2_supercat_tokenizer_config.json"))
        self.special = {self.tokenizer.token_to_id(t) for t in ("<unk>", "<s>", "</s>")} - {None}

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.table.shape[1]), np.float32)
        for i, encoding in enumerate(self.tokenizer.encode_batch(list(texts))):
            ids = [t for t in encoding.ids if t not in self.special]
            if ids:
                v = self.table[ids].mean(0)
                out[i] = v / max(float(np.linalg.norm(v)), 1e-8)
        return out


def wordllama_features(encoder: WordLlamaEncoder, with_tfidf: bool):
    """A `features` for linear_text_baseline: the embeddings, after the TF-IDF columns where
    `with_tfidf`."""
    from scipy.sparse import csr_matrix, hstack

    def fit(train_texts: list[str]):
        tfidf = tfidf_features(train_texts) if with_tfidf else None

        def featurize(items: list[str]):
            dense = csr_matrix(encoder(items))
            return hstack([tfidf(items), dense]).tocsr() if tfidf else dense
        return featurize
    return fit


def evaluation_lake(workdir: Path) -> str:
    """The test export as a lake, where the quality benchmark's first evaluation (or its
    TF-IDF baseline) ingested it."""
    done = sorted(p for p in (workdir / "lake" / EVALUATIONS).glob("benchmark-*") if (p / PRODUCTS_PATH).exists())
    if not done:
        sys.exit(f"No test export ingested under {workdir}/lake/{EVALUATIONS}: run benchmarks.quality "
                 f"--workdir {workdir} first (`--only \"TF-IDF + LR\"` is enough).")
    return open_storage(str(workdir / "lake")).url(f"{EVALUATIONS}/{done[0].name}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="a quality benchmark's --workdir (its lake and exports)")
    p.add_argument("--seed", type=int, default=TrainConfig().seed)
    a = p.parse_args(argv)
    work = Path(a.workdir)
    if not (work / "lake").exists():
        sys.exit(f"No lake under {work}: run benchmarks.quality with --workdir {work} first.")
    lake, eval_lake = str(work / "lake"), evaluation_lake(work)
    encoder = WordLlamaEncoder()
    models = {"TF-IDF": tfidf_features,
              "WordLlama": wordllama_features(encoder, with_tfidf=False),
              "TF-IDF + WordLlama": wordllama_features(encoder, with_tfidf=True)}
    results = {}
    for name, features in models.items():
        t = time.perf_counter()
        r = linear_text_baseline(lake, eval_lake, a.seed, features=features, name=name)
        results[name] = dict(r, seconds=round(time.perf_counter() - t))
    print(json.dumps(results, indent=2))
    print("| features + LR | validation mean accuracy | test mean accuracy | test mean macro-F1 |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['validation_mean_accuracy']:.3f} | {r['mean_accuracy']:.3f} | "
              f"{r['mean_macro_f1']:.3f} |")
    return results


if __name__ == "__main__":
    main()
