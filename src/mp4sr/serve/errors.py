"""Errors of the serving layer; the HTTP app maps each to a status code."""

from __future__ import annotations

from mp4sr.errors import DataError, MP4SRError

SHOWN = 10  # ids named in one message


def _some(ids: list[str]) -> str:
    more = f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else ""
    return ", ".join(repr(i) for i in ids[:SHOWN]) + more


class UnknownItemsError(DataError):
    """Item ids that are not in the model's catalogue."""

    def __init__(self, ids: list[str], n_items: int, what: str = "history", skippable: bool = True):
        self.ids = list(dict.fromkeys(ids))
        hint = "; pass skip_unknown to ignore them (--skip-unknown on the command line)" if skippable else ""
        super().__init__(
            f"unknown item id(s) in the {what}: {_some(self.ids)}. The model knows {n_items:,} items "
            f"(the catalogue's external ids, e.g. ASINs){hint}."
        )


class DuplicateItemsError(DataError):
    """New items whose id is already in the catalogue (or given twice)."""

    def __init__(self, ids: list[str]):
        self.ids = list(dict.fromkeys(ids))
        super().__init__(f"item id(s) already in the catalogue or given twice: {_some(self.ids)}; ids must be new and distinct")


class UnsupportedError(MP4SRError):
    """The loaded model cannot do what was asked (e.g. an ID-only model asked to add items)."""
