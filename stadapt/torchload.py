"""Reading PyTorch files that came from elsewhere without running pickled code.

A `.pt`/`.pth` file is a pickle, and unpickling can run any code. `torch.load(weights_only=True)`
refuses everything but tensors, numbers and plain containers; what it raises for a refused, damaged
or foreign file becomes one CheckpointError line that names the file.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

from stadapt.errors import CheckpointError, first_line


def refusal(exc: BaseException, what: str = "checkpoint") -> str:
    """Why the weights-only unpickler stopped: the pickled global it met, when it names one."""
    if found := re.search(r"GLOBAL (\S+)", str(exc)):
        return f"holds pickled objects other than tensors and numbers ({found[1]}); refused without running them"
    return f"not a {what} that can be read safely (damaged, or pickled by other code); refused without running it"


def load_weights_only(path: Path, what: str = "checkpoint") -> Any:
    """torch.load of `path` onto the CPU, tensors and plain data only; any failure is one CheckpointError."""
    import torch

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing; one line is enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # the weights-only unpickler stopped: nothing was run
        raise CheckpointError(f"{path}: {refusal(exc, what)}") from None
    except Exception as exc:  # truncated, damaged, foreign: whatever torch raises (IndexError too), it is the file
        raise CheckpointError(f"{path}: not a readable {what}, truncated or damaged ({first_line(exc, 200)})") from None
