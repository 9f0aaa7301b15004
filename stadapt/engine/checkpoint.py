"""Resume state in `checkpoints/last.pt`: written atomically, read without running pickled code.

Everything is stored as tensors, numbers, strings and lists so that
`torch.load(weights_only=True)` can read it; a file that needs more (a pickle exploit, a
foreign training framework's checkpoint) is refused. RNG states are kept per rank so that
a resumed run draws the same dropout masks as an uninterrupted one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stadapt.errors import CheckpointError
from stadapt.fileio import atomic_path
from stadapt.torchload import load_weights_only

FORMAT = "stadapt-checkpoint/1"
CHECKPOINT_FILE = Path("checkpoints") / "last.pt"


def rng_state() -> dict[str, Any]:
    """This process's random generators, in types `weights_only` loading accepts."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` (plus the format tag) to `path` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint this engine wrote; anything else is one CheckpointError line."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    state = load_weights_only(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a stadapt checkpoint (format {found!r}, expected {FORMAT!r})")
    return state
