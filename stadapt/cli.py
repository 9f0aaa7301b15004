"""The `stadapt` command line: thin commands over the shared engine.

Every user mistake surfaces as a `StadaptError` and is printed as one line with its exit
code (2 for bad input); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from stadapt.errors import StadaptError

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


@app.command("train")
def train_command(
    recipe: str = typer.Argument(..., help="A recipe file or the name of a bundled recipe (stadapt recipes)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: --set train.lr=1e-4 (repeatable)."),
    out: Optional[str] = typer.Option(None, "--out", help="Run directory (default runs/<recipe>-<date>-<time>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from checkpoints/last.pt."),
) -> None:
    """Train a video classifier; under torchrun on several GPUs or nodes."""
    from stadapt.engine.train import train

    result = train(recipe, set_, out, resume, console=console)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


@app.command("eval")
def eval_command(
    run_dir: str = typer.Argument(..., help="A run directory (or its adapter.safetensors)."),
    split: str = typer.Option("val", "--split", help="The split of the run's data.root to score."),
    set_: list[str] = typer.Option([], "--set", help="Override data.* keys: --set data.test_views.temporal=3."),
) -> None:
    """Score a trained run: multi-view top-1/top-5, mean class accuracy, confusion matrix."""
    from pathlib import Path

    from stadapt.engine.evaluate import report_table, run_eval

    report = run_eval(Path(run_dir), split, set_)
    if report is not None:
        console.print(report_table(report, f"{run_dir}: {split}"))
        console.print(f"wrote {Path(run_dir) / f'eval-{split}.json'} and confusion-{split}.csv/.png", highlight=False)


@app.command("predict")
def predict_command(
    videos: list[str] = typer.Argument(..., help="Video files or directories of videos."),
    model: Optional[str] = typer.Option(None, "--model", help="A run directory (default runs/latest)."),
    top_k: int = typer.Option(5, "--top-k", help="How many classes to list per video."),
    views: Optional[str] = typer.Option(None, "--views", help="Test views TEMPORALxSPATIAL (default: the run's)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list and nothing else."),
) -> None:
    """Classify videos with a trained run; exit code 1 only when no video could be read."""
    import json

    from stadapt.engine.predict import predict, predictions_table, resolve_model_dir

    model_dir = resolve_model_dir(model)
    results = predict(videos, model_dir, top_k, views)
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        console.print(predictions_table(results, model_dir))
    if not any("predictions" in entry for entry in results):
        raise typer.Exit(1)


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
