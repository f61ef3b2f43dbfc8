"""Flow: split, train, tune thresholds, evaluate, register a model version."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows._common import DEFAULT_LAKE
from tagger.config import TrainConfig
from tagger.registry import read_card
from tagger.report import render_card_markdown
from tagger.storage import open_storage
from tagger.train import train_model


@task  # no retries: a failed training run is a bug or bad data, not bad luck
def train_task(lake: str, config: TrainConfig) -> str:
    return train_model(lake, config)


@task
def publish_report(lake: str, version: str) -> None:
    card = read_card(open_storage(lake), version)
    create_markdown_artifact(render_card_markdown(card), key="model-report",
                             description=f"Model {version}")


@flow(name="train")
def train(lake: str = DEFAULT_LAKE, config: TrainConfig = TrainConfig()) -> str:
    """Train a model on the lake's products and register it; returns the version."""
    version = train_task(lake, config)
    publish_report(lake, version)
    get_run_logger().info("registered model %s", version)
    return version
