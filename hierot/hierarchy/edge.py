"""One link of a label tree, shared by the tree and the file readers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Edge:
    """One parent -> child link, with its weight and the location it was read from
    (``file:line``, for error messages)."""

    parent: str
    child: str
    weight: float = 1.0
    location: str = ""
