"""The Label Studio project of a lake's taxonomy: its labelling config, made from the taxonomy.

One choice group per attribute (named as the attribute, so a result's `from_name` is the
attribute and each choice is a value, matched by name), radio buttons for `single`
attributes and check boxes for `multi` ones, under the product's image and a line that says
why it is there. The project is found by its title, so nothing about it is stored in the lake,
and its config is brought up to date on every push (Label Studio itself refuses a change
that would orphan existing annotations, and says so).
"""

from __future__ import annotations

import logging
from xml.sax.saxutils import quoteattr

from catalog_schemas.taxonomy import Taxonomy
from tagger.review.client import LabelStudio

log = logging.getLogger(__name__)


def project_title(taxonomy: Taxonomy) -> str:
    return f"product-tagger {taxonomy.name}"[:50]  # Label Studio's limit on titles


def label_config(taxonomy: Taxonomy) -> str:
    """The labelling config (Label Studio's XML) of the taxonomy."""
    lines = ['<View>', '  <Image name="image" value="$image" maxWidth="360px"/>',
             '  <Text name="about" value="$about"/>']
    for attr in taxonomy.attributes:
        kind = "single-radio" if attr.kind == "single" else "multiple"
        how = "one" if attr.kind == "single" else "any number, or none"
        applies = "" if attr.categories is None else f"; only {', '.join(attr.categories)}"
        lines.append(f'  <Header value={quoteattr(f"{attr.name} ({how}{applies})")} size="5"/>')
        lines.append(f'  <Choices name={quoteattr(attr.name)} toName="image" choice="{kind}" '
                     'showInline="true">')
        lines += [f'    <Choice value={quoteattr(v)}/>' for v in attr.values]
        lines.append('  </Choices>')
    lines.append('</View>')
    return "\n".join(lines)


def find_project(client: LabelStudio, taxonomy: Taxonomy) -> dict | None:
    title = project_title(taxonomy)
    return next((p for p in client.projects() if p.get("title") == title), None)


def ensure_project(client: LabelStudio, taxonomy: Taxonomy) -> dict:
    """The taxonomy's project, created, or with its labelling config brought up to date."""
    config = label_config(taxonomy)
    project = find_project(client, taxonomy)
    if project is None:
        project = client.create_project(project_title(taxonomy), config,
                                        description=f"Review of product-tagger tags ({taxonomy.name})")
        log.info("created Label Studio project %s (%s)", project["id"], client.project_url(project["id"]))
    elif project.get("label_config") != config:
        project = client.update_project(project["id"], label_config=config)
        log.info("updated the labelling config of Label Studio project %s", project["id"])
    return project
