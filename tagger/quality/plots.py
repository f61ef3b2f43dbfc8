"""Plots of an evaluation, as PNG bytes: what a person would rather look at than read."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import confusion_matrix, precision_recall_curve  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_attributes(per_attribute: dict) -> bytes:
    """Bar chart per attribute: accuracy (single) and macro-F1."""
    names = list(per_attribute)
    acc = [per_attribute[a].get("accuracy") or 0.0 for a in names]
    f1 = [per_attribute[a].get("macro_f1") or 0.0 for a in names]
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    ax.barh(y - 0.2, acc, height=0.4, label="accuracy (single)")
    ax.barh(y + 0.2, f1, height=0.4, label="macro-F1")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title("Per attribute")
    return _png(fig)


def plot_pr_curves(curves: list[tuple[str, np.ndarray, np.ndarray, float]]) -> bytes:
    """Precision-recall curves: (label, y_true, scores, ap) each."""
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for label, y_true, scores, ap in curves:
        precision, recall, _ = precision_recall_curve(y_true, scores)
        ax.plot(recall, precision, label=f"{label} (AP {ap:.2f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("Best and worst values by average precision")
    return _png(fig)


def plot_confusion(attribute: str, true: list[str], predicted: list[str], top: int = 12) -> bytes:
    """Row-normalised confusion matrix of a single attribute over its `top` values by support."""
    values, counts = np.unique(true, return_counts=True)
    keep = [v for _, v in sorted(zip(-counts, values))][:top]
    other = ["(other)"] if len(values) > len(keep) else []
    labels = keep + other + ["(none)"]
    squash = lambda v: v if v in keep or v == "(none)" else "(other)"
    cm = confusion_matrix([squash(t) for t in true], [squash(p) for p in predicted], labels=labels)
    cm = cm[: len(keep) + len(other)]  # no true "(none)" row: only known labels are evaluated
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(0.5 * len(labels) + 2.5, 0.5 * len(cm) + 2))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(cm)), labels[: len(cm)], fontsize=8)
    for i in range(norm.shape[0]):
        for j in range(norm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{attribute}: confusion (top {len(keep)} values)")
    return _png(fig)


def plot_training_curves(history: list[dict]) -> bytes:
    """Per epoch: train and validation loss, validation mAP and mean accuracy, and the
    top-1 accuracy of each single attribute (from the card's history entries)."""
    rows = [h if isinstance(h, dict) else h.model_dump() for h in history]
    epochs = [h["epoch"] for h in rows]
    series = lambda key: [np.nan if h.get(key) is None else h[key] for h in rows]  # noqa: E731
    fig, (loss_ax, score_ax, attr_ax) = plt.subplots(1, 3, figsize=(14, 4))
    loss_ax.plot(epochs, series("train_loss"), marker="o", label="train")
    loss_ax.plot(epochs, series("val_loss"), marker="o", label="validation")
    loss_ax.set_title("Loss")
    score_ax.plot(epochs, series("val_mAP"), marker="o", label="validation mAP")
    score_ax.plot(epochs, series("val_accuracy"), marker="o", label="validation mean accuracy")
    score_ax.set_title("Validation mAP and mean accuracy")
    attributes = sorted({a for h in rows for a in (h.get("val_attribute_accuracy") or {})})
    for attr in attributes:
        attr_ax.plot(epochs, [(h.get("val_attribute_accuracy") or {}).get(attr, np.nan) for h in rows],
                     marker=".", label=attr)
    attr_ax.set_title("Validation top-1 accuracy per attribute")
    for ax in (loss_ax, score_ax, attr_ax):
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    score_ax.set_ylim(0, 1.02)
    attr_ax.set_ylim(0, 1.02)
    return _png(fig)
