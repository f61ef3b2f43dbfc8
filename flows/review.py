"""Flows: needs-review tags to Label Studio (review-push), its decisions back (review-pull).

LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY come from the worker's environment (the work
pool's env, or a Prefect Secret block put there), never from a parameter.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from flows._artifacts import publish_review_pull, publish_review_push
from flows._common import DEFAULT_LAKE, retry_on_transient
from tagger.review.feedback import render_feedback
from tagger.review.pull import pull_reviews
from tagger.review.push import push_reviews


# Retried (Label Studio unreachable): a second push adds only what the first did not.
@task(retries=2, retry_delay_seconds=30, retry_condition_fn=retry_on_transient)
def push_task(lake: str, label_issues: bool, sample: int, limit: int | None) -> dict:
    return push_reviews(lake, label_issues=label_issues, sample=sample, limit=limit).to_dict()


# Retried: pulling the same decisions again changes nothing.
@task(retries=2, retry_delay_seconds=30, retry_condition_fn=retry_on_transient)
def pull_task(lake: str, run_id: str) -> dict:
    return pull_reviews(lake, run_id=run_id).to_dict()


@flow(name="review-push")
def review_push(lake: str = DEFAULT_LAKE, label_issues: bool = False, sample: int = 0,
                limit: int | None = None) -> dict:
    """Add a Label Studio task for each product with needs-review tags (and label issues, a
    sample of auto-published products) that has none yet."""
    result = push_task(lake, label_issues, sample, limit)
    publish_review_push(result)
    get_run_logger().info("review push: %d tasks added to %s", result["added"], result["project_url"])
    return result


@flow(name="review-pull")
def review_pull(lake: str = DEFAULT_LAKE) -> dict:
    """Reviewers' decisions -> catalog/corrections/ and reviewed tags; accuracy from feedback."""
    result = pull_task(lake, f"pull-{flow_run.get_id() or 'local'}")
    publish_review_pull(result, render_feedback(result["feedback"]))
    get_run_logger().info("review pull: %d corrections, %d changed", result["corrections"], result["changed"])
    return result
