"""inductor's autotuning report of each matrix product, from the log of a max-autotune compile, as JSON.

Why: `benchmarks/h200.sh` part `autotune` (bench model with --compile-mode
max-autotune-no-cudagraphs) prints, for each product, cuBLAS's time and the best Triton
template's. Triton templates are what would fuse element-wise work (QuickGELU, residual adds)
into the products; this says what they cost before any fusion.

    python -m benchmarks.autotune_choices h200.log --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

STATS = re.compile(r"Autotune Choices Stats:\n(\{.*?\})\nAUTOTUNE (\S+\(.*?\))\n")


def choices(log: str) -> list[dict]:
    """One row per product: its shapes, the chosen kernel, its time and the best Triton template's (ms)."""
    rows = []
    for match in STATS.finditer(log):
        stats, product = json.loads(match.group(1)), match.group(2)
        if stats["best_kernel"].startswith("triton"):
            best_triton = stats["best_time"]
        else:  # absent where no Triton template compiled for the shape
            best_triton = stats.get("best_triton_time")
        rows.append({"product": product, "chosen": stats["best_kernel"], "chosen_ms": round(stats["best_time"], 4),
                     "best_triton_ms": None if best_triton is None else round(best_triton, 4),
                     "triton_over_chosen": None if best_triton is None else round(best_triton / stats["best_time"], 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log")
    parser.add_argument("--out", required=True)
    parser.add_argument("--note", default="", help="what the run was (device, versions, date, outcome)")
    args = parser.parse_args()
    rows = choices(Path(args.log).read_text())
    Path(args.out).write_text(json.dumps({"benchmark": "autotune_choices", "note": args.note, "products": rows},
                                         indent=2) + "\n")
    print(f"{args.out}: {len(rows)} products")


if __name__ == "__main__":
    main()
