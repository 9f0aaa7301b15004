"""Your own videos listed in CSV files: `path,label` per split.

By default the lists are ROOT/train.csv and ROOT/val.csv (`--train-csv`, `--val-csv` point
elsewhere). `path` is relative to ROOT, or absolute. `label` is a class name or an index:
with a ROOT/classes.txt (one name a line) both refer to it; without one, labels that are
all integers are indices (classes "0".."N-1"), otherwise they are names, sorted.
"""

from __future__ import annotations

from pathlib import Path

from stadapt.data.indexers.base import Candidate, Index, IndexOptions, Skipped, csv_rows, read_text, safe_relative
from stadapt.errors import DataError


def parse_list(text: str, source: str) -> list[tuple[str, str, str]]:
    """CSV text with a `path,label` header → (file:line, path, label) per row."""
    rows = csv_rows(text, source, ("path", "label"))
    return [(f"{source}:{number}", row["path"], row["label"]) for number, row in rows]


def resolve_classes(labels: list[str], given: list[str] | None) -> list[str]:
    """The class list: the given one, or derived from the labels as the module says."""
    if given is not None:
        return given
    present = {label for label in labels if label}
    if present and all(label.isascii() and label.isdigit() for label in present):
        return [str(i) for i in range(max(int(label) for label in present) + 1)]
    return sorted(present)


def to_candidates(rows: list[tuple[str, str, str]], classes: list[str]) -> tuple[list[Candidate], list[Skipped]]:
    label_of = {name: i for i, name in enumerate(classes)}
    candidates, skipped, seen = [], [], set()
    for where, raw_path, label in rows:
        index = label_of.get(label)
        if index is None and label.isascii() and label.isdigit() and int(label) < len(classes):
            index = int(label)
        path = Path(raw_path) if Path(raw_path).is_absolute() else safe_relative(raw_path)
        if index is None:
            skipped.append(Skipped(where, f"label {label!r} is not a known class"))
        elif path is None:
            skipped.append(Skipped(where, f"path {raw_path!r} leaves ROOT"))
        elif path in seen:
            skipped.append(Skipped(where, f"{raw_path} is listed twice"))
        else:
            seen.add(path)
            candidates.append(Candidate(path, {"label": index}))
    return candidates, skipped


def index(root: Path, options: IndexOptions) -> Index:
    sources = {"train": options.train_csv or root / "train.csv", "val": options.val_csv or root / "val.csv"}
    for split, source in sources.items():
        if not source.is_file():
            raise DataError(f"csv: no {split} list at {source} (put {split}.csv in ROOT or pass --{split}-csv PATH)")
    rows = {split: parse_list(read_text(source), str(source)) for split, source in sources.items()}
    class_file = root / "classes.txt"
    given = None
    if class_file.is_file():
        given = [line.strip() for line in read_text(class_file).split("\n") if line.strip()]
    classes = resolve_classes([label for split_rows in rows.values() for _, _, label in split_rows], given)
    if not classes:
        raise DataError(f"csv: no class names in {class_file if given is not None else 'the labels'}")
    result = Index(root, {"label": classes}, {}, sources=list(sources.values()))
    if given is not None:
        result.sources.append(class_file)
    for split, split_rows in rows.items():
        result.splits[split], result.skipped[split] = to_candidates(split_rows, classes)
    return result
