"""Tag runs: which products to tag, scoring, tag rows, and the tag tables.

plan.py (which products), rows.py (scores -> tag rows), streams.py and merge.py (the latest
and state tables merged as sorted streams), changes.py (what a run changed), run.py (a
whole run, and the order and crash rules of its writes).
"""

from tagger.tag.changes import compute_tag_changes
from tagger.tag.plan import TagPlan, plan_tagging
from tagger.tag.run import TagResult, score_products, tag_catalog, write_tags

__all__ = ["TagPlan", "TagResult", "compute_tag_changes", "plan_tagging", "score_products",
           "tag_catalog", "write_tags"]
