"""One indexer per data set layout: annotation files as distributed → candidate samples.

Each module has `index(root, options) -> Index`; `INDEXERS` names them for the CLI.
`synthetic` is not here: it generates videos first, then indexes them like `folder`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from stadapt.data.indexers import csv, ek100, folder, hmdb51, k400, ssv2, ucf101
from stadapt.data.indexers.base import Candidate, Index, IndexOptions, Skipped

INDEXERS: dict[str, Callable[[Path, IndexOptions], Index]] = {
    "k400": k400.index,
    "ssv2": ssv2.index,
    "ek100": ek100.index,
    "ucf101": ucf101.index,
    "hmdb51": hmdb51.index,
    "folder": folder.index,
    "csv": csv.index,
}

__all__ = ["INDEXERS", "Candidate", "Index", "IndexOptions", "Skipped"]
