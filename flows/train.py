"""Flow: split, train, tune thresholds, evaluate, register a model version."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from flows._artifacts import publish_model, publish_promotion
from flows._common import DEFAULT_LAKE
from tagger.config import TrainConfig
from tagger.train.launch import run_training
from tagger.model.versions import read_card
from tagger.io.storage import open_storage
from tagger.train.gate import read_gate_report


@task  # no retries: a failed training run is a bug or bad data, not bad luck
def train_task(lake: str, config: TrainConfig) -> str:
    return run_training(lake, config)  # torchrun with one process per GPU when there are several


@task
def publish_report(lake: str, version: str) -> None:
    storage = open_storage(lake)
    publish_model(read_card(storage, version))
    # the gate ran inside training (torchrun's rank 0, maybe another process): its table is in the lake
    publish_promotion(version, read_gate_report(storage, version))


@flow(name="train")
def train(lake: str = DEFAULT_LAKE, config: TrainConfig = TrainConfig()) -> str:
    """Train a model on the lake's products and register it; returns the version. The
    promotion gate decides whether it becomes production (artifact promotion)."""
    version = train_task(lake, config)
    publish_report(lake, version)
    get_run_logger().info("registered model %s", version)
    return version
