"""The `stadapt` command line: thin commands over the shared engine.

Every user mistake surfaces as a `StadaptError` and is printed as one line with its exit
code (2 for bad input); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from stadapt.errors import StadaptError
from stadapt.fileio import atomic_write_text

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Adapt frozen image ViTs to video with Spatio-Temporal Adapters.")
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True)
bench_app = typer.Typer(no_args_is_help=True, help="Measure cost: parameters, FLOPs, speed, memory, loading.")
app.add_typer(bench_app, name="bench")


@app.command("recipes")
def recipes_command() -> None:
    """List the bundled recipes (paper Table 8, fine-tuning and the demo)."""
    from stadapt.recipe import RECIPES_DIR, bundled_recipes, load_recipe

    table = Table("recipe", "dataset", "backbone", "adapters", "steps", "batch", "views",
                  title="bundled recipes (stadapt train recipes/NAME.yaml)")
    for name in bundled_recipes():
        r = load_recipe(RECIPES_DIR / f"{name}.yaml")
        views = f"{r.data.test_views.temporal}x{r.data.test_views.spatial}"
        table.add_row(name, r.data.dataset, r.model.backbone, "+".join(r.model.adapter.positions),
                      str(r.train.steps), str(r.train.batch_size), views)
    console.print(table)


@bench_app.command("loader")
def bench_loader_command(
    recipe: str = typer.Option("k400_vitb", "--recipe", help="Recipe file or bundled name; data.root names the data."),
    overrides: list[str] = typer.Option([], "--set", help="key=value recipe override, repeatable."),
    workers: int = typer.Option(1, "--workers", min=0, help="DataLoader worker processes (one CPU core each)."),
    source: str = typer.Option("prepared", "--source", help="prepared (the store of prepare --decode) or raw videos."),
    clips: int = typer.Option(256, "--clips", min=1, help="Clips to time after the warm-up."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Clips per batch."),
    reference_clips: int = typer.Option(24, "--reference-clips", min=1, help="Clips for the reference PyAV loader."),
    rounds: int = typer.Option(3, "--rounds", min=1, help="Alternating rounds of both loaders; the best of each counts."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else on stdout."),
    out: Optional[Path] = typer.Option(None, "--out", help="JSON file to write (default benchmarks/results/loader-RECIPE-DATE.json)."),
) -> None:
    """Clips/s of the training data pipeline per worker, against the reference PyAV loader."""
    from stadapt.loader_bench import bench_loader
    from stadapt.recipe import load_recipe, resolve_recipe_path

    if source not in ("prepared", "raw"):
        raise typer.BadParameter(f"{source!r} is not one of prepared, raw", param_hint="--source")
    path = resolve_recipe_path(recipe)
    result = bench_loader(load_recipe(path, overrides), workers=workers, source=source, num_clips=clips,
                          batch_size=batch_size, reference_clips=reference_clips, rounds=rounds,
                          recipe_path=str(path))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = out or Path("benchmarks/results") / f"loader-{path.stem}-{stamp}.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    if json_out:
        print(json.dumps(result))
        return
    table = Table("metric", "value", title=f"loader: {path.stem}, source={source}, workers={workers}")
    for key in ("clips_per_s", "clips_per_s_per_worker", "reference_clips_per_s_per_worker", "speedup_vs_reference",
                "clips_per_cpu_s", "reference_clips_per_cpu_s", "cpu_speedup_vs_reference",
                "num_frames", "crop", "batch_size", "clips_timed", "skipped_videos", "cpu"):
        table.add_row(key, str(result[key]))
    console.print(table)
    console.print(f"saved {out}")


@app.callback()
def _root() -> None:
    """Adapt frozen image ViTs to video with Spatio-Temporal Adapters."""


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point that turns user errors into one line and an exit code."""
    logging.getLogger().setLevel(logging.ERROR)  # open_clip logs "no pretrained weights" at WARNING
    try:
        app(args=argv, prog_name="stadapt")  # click prints usage errors itself and exits 2
    except StadaptError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def run() -> None:
    sys.exit(main())
