"""A product's text (title, description) from its catalog row: the mapping's `text` parts
filled from the row and joined, then cleaned, so that the same words are the same string
in the products table whatever invisible characters or spacing the export had.

A cell that shows a decoding error (U+FFFD, or a lone surrogate: bytes that were not
UTF-8) is not cleaned but rejected by the row check (tagger.ingest.rows): the text is
damaged, and cleaning would hide it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence

# Characters a product's text keeps at most. Titles are far shorter; a description is
# rarely longer and still useful cut short, so longer text is cut (at a word), not rejected.
MAX_TEXT_CHARS = 2000

REPLACEMENT_CHARACTER = "\ufffd"

# Control, format (zero-width, bidi marks, soft hyphen), private-use and surrogate
# characters: invisible or meaningless in a title, each read as a space.
_BLANKED = frozenset({"Cc", "Cf", "Co", "Cs"})


def undecodable(value: str) -> bool:
    """Whether `value` shows a decoding error: U+FFFD (what a lenient decoder leaves) or a lone
    surrogate (what reading bytes that are not UTF-8 with surrogateescape leaves)."""
    if value.isascii():
        return False
    if REPLACEMENT_CHARACTER in value:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # only lone surrogates cannot be encoded
        return True
    return False


def compose_text(row: Mapping[str, object], parts: Sequence[str]) -> str:
    """The row's text parts (a column, or a `{column}` template filled from the row; a missing
    or empty cell is ''), those with more than whitespace, joined with ' '."""
    filled = []
    for part in parts:
        if "{" in part:
            value = part.format_map(_Cells(row))
        else:
            value = row.get(part)
            value = "" if value is None else str(value)
        if value.strip():
            filled.append(value)
    return " ".join(filled)


class _Cells:
    """A row as str.format_map sees it: a missing or empty cell is ''."""

    def __init__(self, row: Mapping[str, object]):
        self.row = row

    def __getitem__(self, column: str) -> object:
        value = self.row.get(column)
        return "" if value is None else value


def clean_text(value: str | None, limit: int = MAX_TEXT_CHARS) -> tuple[str | None, bool]:
    """(text, truncated): `value` in Unicode NFC, with control, format, private-use and
    surrogate characters replaced by a space, whitespace collapsed to single spaces and
    stripped; None when nothing is left. Longer than `limit` characters, it is cut at the
    last space within the limit (mid-word only when there is none) and truncated is True."""
    if value is None:
        return None, False
    text = unicodedata.normalize("NFC", value)
    if not text.isprintable():  # the common case, plain text, skips the walk over characters
        text = "".join(" " if unicodedata.category(c) in _BLANKED else c for c in text)
    text = " ".join(text.split())
    if not text:
        return None, False
    if len(text) <= limit:
        return text, False
    cut = text.rfind(" ", 0, limit + 1)
    return (text[:cut] if cut > 0 else text[:limit]), True
