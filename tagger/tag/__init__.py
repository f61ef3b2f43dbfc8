"""Tag runs: which products to tag, scoring, tag rows, and the tag tables (tagger.tag.run)."""
