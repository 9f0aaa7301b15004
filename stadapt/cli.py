"""The `stadapt` command line: thin commands over the shared engine.

Every user mistake surfaces as a `StadaptError` and is printed as one line with its exit
code (2 for bad input); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stadapt.errors import StadaptError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Adapt frozen image ViTs to video with Spatio-Temporal Adapters.")
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True)
bench_app = typer.Typer(no_args_is_help=True, help="Measure cost: parameters, FLOPs, speed, memory, loading.")
app.add_typer(bench_app, name="bench")
convert_app = typer.Typer(no_args_is_help=True, help="Import adapters trained by other code into a run directory.")
app.add_typer(convert_app, name="convert")


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


PREPARE_HELP = (
    "Index a data set, probe every video once, write classes.txt, train.csv, val.csv and report.json.\n\n"
    "Annotation files are read where the official archives put them (one folder level more is fine). "
    "Missing and unreadable videos are listed in report.json, not fatal. "
    "A re-run probes only new or changed files.\n\n"
    "csv: ROOT/train.csv and ROOT/val.csv (or --train-csv, --val-csv) with a header `path,label`; "
    "paths are relative to ROOT or absolute; a label is a class name or an index "
    "(into ROOT/classes.txt when there is one).\n\n"
    "synthetic: generates videos into ROOT, then splits them like a folder."
)


@app.command("prepare", help=PREPARE_HELP)
def prepare_command(
    dataset: str = typer.Argument(..., help="k400 | ssv2 | ek100 | ucf101 | hmdb51 | folder | csv | synthetic"),
    root: Path = typer.Argument(..., help="Where the data set was unpacked (synthetic: where to write the videos)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Prepared directory to write (default data/DATASET)."),
    split: str = typer.Option("1", "--split", help="Official split of ucf101 / hmdb51: 1, 2, 3, or all "
                              "(OUT/split1, OUT/split2, OUT/split3, for `stadapt ablate split`)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Probing processes (default: all cores)."),
    decode: bool = typer.Option(False, "--decode/--no-decode", help="Also write the pre-decoded store."),
    store: str = typer.Option("jpeg", "--store", help="With --decode, how the store keeps frames: jpeg (fastest to "
                              "load, decodable on the GPU) or h264 (short-GOP video, about a quarter the size on "
                              "detailed footage, slower to load)."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="folder / synthetic: share of each class for val."),
    seed: int = typer.Option(0, "--seed", help="folder / synthetic: seed of the split (and of the videos)."),
    train_csv: Optional[Path] = typer.Option(None, "--train-csv", help="csv: train list (default ROOT/train.csv)."),
    val_csv: Optional[Path] = typer.Option(None, "--val-csv", help="csv: val list (default ROOT/val.csv)."),
    classes: int = typer.Option(8, "--classes", min=1, help="synthetic: number of classes."),
    videos_per_class: int = typer.Option(20, "--videos-per-class", min=1, help="synthetic: videos per class."),
    frames: int = typer.Option(32, "--frames", min=1, help="synthetic: frames per video."),
    size: str = typer.Option("80x64", "--size", help="synthetic: WIDTHxHEIGHT."),
) -> None:
    """`stadapt prepare`; the user-facing help is PREPARE_HELP."""
    from stadapt.data.indexers import IndexOptions
    from stadapt.data.prepare import (
        PrepareOptions,
        SyntheticOptions,
        parse_size,
        prepare,
        prepare_splits,
        split_dir,
        summary_table,
    )
    from stadapt.data.probe import default_workers

    if split not in ("1", "2", "3", "all"):
        raise typer.BadParameter(f"{split!r} is not one of 1, 2, 3, all", param_hint="--split")
    options = PrepareOptions(
        dataset=dataset, root=root, out=out, workers=workers or default_workers(), decode=decode, store=store,
        index=IndexOptions(split=1 if split == "all" else int(split), val_fraction=val_fraction, seed=seed,
                           train_csv=train_csv, val_csv=val_csv),
        synthetic=SyntheticOptions(classes=classes, videos_per_class=videos_per_class, frames=frames,
                                   size=parse_size(size)),
    )
    out = options.out or Path("data") / dataset
    if split == "all":
        for n, report in prepare_splits(options, console=err_console).items():
            console.print(summary_table(report, split_dir(out, n)))
        return
    console.print(summary_table(prepare(options, console=err_console), out))


@bench_app.command("model")
def bench_model_command(
    recipe: str = typer.Option("k400_vitb", "--recipe", help="recipe file or bundled recipe name"),
    overrides: list[str] = typer.Option([], "--set", help="recipe override key=value (repeatable)"),
    json_output: bool = typer.Option(False, "--json", help="print one JSON object and nothing else"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda [default: cuda when available]"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="[default: 32 on cuda, 2 on cpu]"),
    impl: str = typer.Option("fast", "--impl", help="adapter implementation to measure: fast or reference"),
    steps: Optional[int] = typer.Option(None, "--steps", min=1,
                                        help="timed steps [default: 20 on cuda; on cpu up to 10 within 1 s]"),
    warmup: Optional[int] = typer.Option(None, "--warmup", min=0, help="warm-up steps [default: 5 on cuda, 1 on cpu]"),
    out: Optional[Path] = typer.Option(None, "--out", help="result file [default: benchmarks/results/model-...json]"),
    profile: bool = typer.Option(False, "--profile",
                                 help="also show where the chosen path's step time goes (torch.profiler)"),
    compile_mode: str = typer.Option("default", "--compile-mode",
                                     help="torch.compile mode of training and throughput: default or "
                                          "max-autotune-no-cudagraphs (latency always replays CUDA graphs)"),
) -> None:
    """Parameters, GFLOPs, latency, throughput, training speed and memory, against the reference path."""
    from stadapt.recipe import load_recipe

    loaded = load_recipe(recipe, overrides)  # a bad recipe fails before torch is imported
    from stadapt.bench.model import bench_model, print_model_result, write_model_result

    result = bench_model(loaded, recipe, impl=impl, device=device,
                         batch_size=batch_size, steps=steps, warmup=warmup, profile=profile,
                         compile_mode=compile_mode)
    path = write_model_result(result, out)
    if json_output:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        err_console.print(f"wrote {path}", highlight=False)
        return
    print_model_result(console, result, path)


@convert_app.command("official")
def convert_official_command(
    checkpoint: Path = typer.Argument(...,
                                      help="checkpoint of the public ST-Adapter code (torch.save of {'model': ...})"),
    recipe: str = typer.Option(..., "--recipe", help="recipe giving the backbone, pretrained weights and data"),
    overrides: list[str] = typer.Option([], "--set", help="recipe override key=value (repeatable)"),
    out: Path = typer.Option(..., "--out", help="run directory to write (recipe.yaml, adapter.safetensors)"),
) -> None:
    """Convert a public-code ST-Adapter checkpoint; its tensors set the adapter layout."""
    from stadapt.model.convert import convert_official

    done = convert_official(checkpoint, recipe, out, overrides)
    adapter, ckpt = done.recipe.model.adapter, done.checkpoint
    table = Table("", "", show_header=False, title=f"converted {checkpoint} → {done.out}")
    table.add_row("backbone", f"{done.recipe.model.backbone} ({done.recipe.model.pretrained})")
    table.add_row("positions", ", ".join(adapter.positions))
    table.add_row("layers", str(adapter.layers))
    table.add_row("width / kernel", f"{adapter.width} / {'x'.join(map(str, adapter.kernel))}, activation none")
    table.add_row("classes", f"{ckpt.num_classes} from {done.class_source}")
    table.add_row("tensors imported", f"{done.tensors} (ignored: optimizer state and {len(ckpt.ignored)} other keys)")
    console.print(table)
    if done.recipe.model.pretrained.lower() in ("", "none"):
        err_console.print("warning: model.pretrained is none, so these adapters sit on a random backbone",
                          highlight=False)
    console.print(f"load it with stadapt.load_model({str(done.out)!r})", highlight=False)


@bench_app.command("run")
def bench_run_command(
    run_dir: Path = typer.Argument(..., help="a run directory of stadapt train"),
    skip: int = typer.Option(1, "--skip", min=0, help="logged windows to leave out (compilation, warm-up)"),
    model_result: Optional[Path] = typer.Option(
        None, "--model-result", help="JSON of stadapt bench model, same recipe and batch per process"),
    baseline: Optional[Path] = typer.Option(
        None, "--baseline",
        help="JSON of stadapt bench run for the same recipe on one process, for the scaling efficiency"),
    json_output: bool = typer.Option(False, "--json", help="print one JSON object and nothing else"),
    out: Optional[Path] = typer.Option(None, "--out", help="result file [default: benchmarks/results/run-...json]"),
) -> None:
    """End-to-end training throughput of a run (loader included), against the model alone or one process."""
    from stadapt.bench.results import write_result
    from stadapt.bench.run import bench_run, run_table

    result = bench_run(run_dir, skip, model_result, baseline)
    out = write_result(result, out, "run", run_dir.name, result["device"])
    if json_output:
        print(json.dumps(result))
        return
    console.print(run_table(result, run_dir))
    console.print(f"saved {out}", highlight=False)


@bench_app.command("loader")
def bench_loader_command(
    recipe: str = typer.Option("k400_vitb", "--recipe", help="Recipe file or bundled name; data.root names the data."),
    overrides: list[str] = typer.Option([], "--set", help="key=value recipe override, repeatable."),
    workers: int = typer.Option(1, "--workers", min=0, help="DataLoader worker processes (one CPU core each)."),
    source: str = typer.Option("prepared", "--source", help="prepared (the store of prepare --decode) or raw videos."),
    clips: int = typer.Option(256, "--clips", min=1, help="Clips to time after the warm-up."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Clips per batch."),
    reference_clips: int = typer.Option(24, "--reference-clips", min=1, help="Clips for the reference PyAV loader."),
    rounds: int = typer.Option(3, "--rounds", min=1,
                               help="Alternating rounds of both loaders; the best of each counts."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else on stdout."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="JSON file to write (default benchmarks/results/loader-RECIPE-DATE.json)."),
) -> None:
    """Clips/s of the training data pipeline per worker, against the reference PyAV loader."""
    from stadapt.bench.loader import bench_loader, loader_table, write_loader_result
    from stadapt.recipe import load_recipe, resolve_recipe_path

    if source not in ("prepared", "raw"):
        raise typer.BadParameter(f"{source!r} is not one of prepared, raw", param_hint="--source")
    path = resolve_recipe_path(recipe)
    result = bench_loader(load_recipe(path, overrides), workers=workers, source=source, num_clips=clips,
                          batch_size=batch_size, reference_clips=reference_clips, rounds=rounds,
                          recipe_path=str(path))
    out = write_loader_result(result, out)
    if json_out:
        print(json.dumps(result))
        return
    console.print(loader_table(result))
    console.print(f"saved {out}")


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
    decode: str = typer.Option("auto", "--decode", help="Where to decode the prepared store's JPEGs: cpu, gpu, or "
                                                        "auto (gpu on CUDA with data.source = prepared)."),
) -> None:
    """Score a trained run: multi-view top-1/top-5, mean class accuracy, confusion matrix."""
    from stadapt.engine.evaluate import report_table, run_eval

    report = run_eval(Path(run_dir), split, set_, decode)
    if report is not None:
        console.print(report_table(report, f"{run_dir}: {split}"))
        console.print(f"wrote {Path(run_dir) / f'eval-{split}.json'} and confusion-{split}.csv/.png", highlight=False)


PREDICT_HELP = (
    "Classify videos with a trained run; exit code 1 only when no video could be read.\n\n"
    "--timeline scores an untrimmed video as windows of --window-s seconds every --stride-s seconds (default: "
    "the span of one clip of the recipe, and half of it). "
    "--out FILE.jsonl streams one JSON line per video as it is done (for collections of any size; --resume "
    "adds only the videos the file lacks); --out DIR with --timeline writes a PNG per video there."
)


@app.command("predict", help=PREDICT_HELP)
def predict_command(
    videos: list[str] = typer.Argument(..., help="Video files or directories of videos."),
    model: Optional[str] = typer.Option(None, "--model", help="A run directory (default runs/latest)."),
    top_k: int = typer.Option(5, "--top-k", help="How many classes to list per video."),
    views: Optional[str] = typer.Option(None, "--views", help="Test views TEMPORALxSPATIAL (default: the run's)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list and nothing else."),
    timeline: bool = typer.Option(False, "--timeline", help="Predict windows along each video."),
    window_s: Optional[float] = typer.Option(None, "--window-s", help="--timeline: window length in seconds."),
    stride_s: Optional[float] = typer.Option(None, "--stride-s", help="--timeline: seconds between window starts."),
    out: Optional[Path] = typer.Option(None, "--out", help="FILE.jsonl: stream results there; DIR: timeline PNGs."),
    resume: bool = typer.Option(False, "--resume", help="With --out FILE.jsonl: skip the videos already in it."),
) -> None:
    """`stadapt predict`; the user-facing help is PREDICT_HELP."""
    from stadapt.engine.predict import (
        Predictor,
        Timeline,
        expand_inputs,
        predictions_table,
        resolve_model_dir,
        timeline_table,
        write_timeline_plots,
    )

    stream = out is not None and out.suffix == ".jsonl"
    if out is not None and not stream and not timeline:
        raise StadaptError(f"--out {out}: a results file must end in .jsonl (a directory is for --timeline PNGs)")
    if resume and not stream:
        raise StadaptError("--resume continues a results file: pass --out FILE.jsonl")
    if not timeline and (window_s is not None or stride_s is not None):
        raise StadaptError("--window-s and --stride-s need --timeline")
    spans = Timeline(window_s, stride_s) if timeline else None
    predictor = Predictor(resolve_model_dir(model), top_k, views)
    entries = expand_inputs(videos)
    if stream:
        from stadapt.engine.collection import stream_predictions, summary_line
        from stadapt.engine.progress import CountProgress

        summary = stream_predictions(predictor, entries, out, resume, spans, CountProgress(err_console))
        err_console.print(summary_line(summary), highlight=False, soft_wrap=True)
        if summary.written and summary.written == summary.errors:
            raise typer.Exit(1)
        return
    results = list(predictor.results(entries, spans))
    if out is not None:
        written = write_timeline_plots(results, predictor.model.class_names, out, max(top_k, 5))
        err_console.print(f"wrote {len(written)} timeline plot(s) to {out}", highlight=False)
    entries_out = [r.entry for r in results]
    if as_json:
        print(json.dumps(entries_out, indent=2))
    elif timeline:
        console.print(timeline_table(entries_out, predictor.model_dir))
    else:
        console.print(predictions_table(entries_out, predictor.model_dir))
    if not any("predictions" in entry for entry in entries_out):
        raise typer.Exit(1)


@app.command("explain")
def explain_command(
    videos: list[str] = typer.Argument(..., help="Video files or directories of videos."),
    model: Optional[str] = typer.Option(None, "--model", help="A run directory (default runs/latest)."),
    out: Path = typer.Option(Path("explain"), "--out", help="Directory for one PNG and one JSON per video."),
) -> None:
    """Attention maps (Fig. 3): the CLS token's last-block attention per frame, with and without the adapters.

    Exit code 1 only when no video could be read.
    """
    from stadapt.engine.explain import explain
    from stadapt.engine.predict import resolve_model_dir

    results = explain(videos, resolve_model_dir(model), out)
    for entry in results:
        if "error" in entry:
            err_console.print(f"[red]skipped[/] {entry['error']}", highlight=False, soft_wrap=True)
        else:
            console.print(f"{entry['video']}: wrote {entry['png']} and {entry['json']}", highlight=False,
                          soft_wrap=True)
    if not any("png" in entry for entry in results):
        raise typer.Exit(1)


@app.command("export")
def export_command(
    run_dir: Path = typer.Argument(..., help="A run directory (or its adapter.safetensors)."),
    fmt: str = typer.Option(..., "--format", help="onnx | torchscript"),
    out: Optional[Path] = typer.Option(None, "--out", help="File to write (default RUN/model.onnx, "
                                       "RUN/model.torchscript.pt); its sidecar is FILE.json."),
) -> None:
    """Export the whole classifier (backbone, adapters, heads) as one ONNX or TorchScript file."""
    from stadapt.engine.export import export_run

    done = export_run(run_dir, fmt, out)
    meta = done.metadata
    size_mb = done.path.stat().st_size / 2**20
    outputs = ", ".join(f"{o['name']} N×{o['num_classes']}" for o in meta["outputs"])
    console.print(f"wrote {done.path} ({size_mb:,.1f} MiB): input {meta['input']['name']} "
                  f"N×3×{meta['num_frames']}×{meta['crop']}×{meta['crop']} float32, output {outputs}",
                  highlight=False, soft_wrap=True)
    console.print(f"wrote {done.sidecar}: class names, mean/std, frames, crop, sampling, backbone",
                  highlight=False, soft_wrap=True)


@app.command("compare")
def compare_command(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories with an eval-<split>.json."),
    split: str = typer.Option("val", "--split", help="Which evaluation of each run to compare."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else."),
) -> None:
    """Runs side by side (accuracy, views, GFLOPs), saying which were not evaluated on the same videos."""
    from stadapt.engine.protocol import compare_runs, comparison_notes, comparison_table

    result = compare_runs(run_dirs, split)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(comparison_table(result))
    for line in comparison_notes(result):
        console.print(line, highlight=False, soft_wrap=True)


ABLATE_HELP = (
    "Train and evaluate one variant of the recipe per value of AXIS, then tabulate and plot them.\n\n"
    "AXIS and its default values (the paper's): width 64,128,256,384,768 (Table 5a); "
    "layers 1-4,5-8,9-12,5-12,1-12 (Table 5b: 1-based blocks of ViT-B/16, scaled to the depth of another "
    "backbone); position before_attn,after_attn,after_ffn,before_attn+after_attn (Table 5c); "
    "kernel 1x1x1,1x3x3,3x1x1,3x3x3 (Table 7); "
    "method linear_probe,attn_pool,prompt,partial,adapter,st_adapter,full (Table 1); "
    "steps 0.25,0.5,0.75,1 (Fig. 2b: fractions of the recipe's steps and warm-up); "
    "data 0.05,0.1,0.2,0.5,1 (Fig. 2c: a seeded class-stratified share of the train split, data.train_fraction); "
    "frames 8,16,32 (Tables 2, 3: dense sampling keeps the recipe's temporal span, so strides 16, 8, 4 on K400; "
    "the table adds GFLOPs per view × views); "
    "split 1,2,3 (Table 12: DATA_ROOT/split1..3 of `stadapt prepare ucf101|hmdb51 ROOT --split all`; "
    "the table ends with their mean).\n\n"
    "--methods st_adapter,full trains every value once per method (OUT/METHOD/VALUE): one line per method "
    "in the plot, one column per method in the table.\n\n"
    "Each variant is a run directory OUT/VARIANT. A finished one (eval-val.json, adapter.safetensors) is not "
    "trained again and an interrupted one resumes from its checkpoint, so re-running the same command "
    "completes a sweep. "
    "Variants run one per GPU at a time (CUDA_VISIBLE_DEVICES), one after another on the CPU. "
    "Writes OUT/ablate-AXIS.csv, .md and .png."
)


@app.command("ablate", help=ABLATE_HELP)
def ablate_command(
    axis: str = typer.Argument(..., help="width | layers | position | kernel | method | steps | data | frames | split"),
    recipe: str = typer.Option("k400_vitb", "--recipe", help="Recipe file or bundled recipe name."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key for every variant (repeatable)."),
    values: Optional[str] = typer.Option(None, "--values", help="Comma-separated values instead of the paper's, "
                                         "e.g. 64,384 or 1x1x1,3x1x1 (layers: 1-based block ranges, as written)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory of the sweep (default ablations/RECIPE-AXIS)."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated methods, each value trained "
                                          "once per method, e.g. st_adapter,full (default: the recipe's)."),
) -> None:
    """`stadapt ablate`; the user-facing help is ABLATE_HELP."""
    import signal

    from stadapt.ablate.report import read_rows, results_table, write_reports
    from stadapt.ablate.runner import AblationIncomplete, plan, run_ablation

    ablation = run_ablation(plan(axis, recipe, set_, values, out, methods),
                            say=lambda line: err_console.print(line, highlight=False, soft_wrap=True))
    rows = read_rows(ablation)
    console.print(results_table(ablation, rows))
    paths = write_reports(ablation, rows)
    err_console.print(f"wrote {', '.join(map(str, paths))}", highlight=False, soft_wrap=True)
    if ablation.signum is not None:
        err_console.print(f"stopped by {signal.Signals(ablation.signum).name}; run the same command again to "
                          "continue (finished variants are kept, interrupted ones resume)", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(128 + ablation.signum)
    if ablation.failed:
        failed = ", ".join(f"{r.variant.key} (see {r.run_dir / 'train.log'})" for r in ablation.failed)
        raise AblationIncomplete(f"{len(ablation.failed)} of {len(ablation.runs)} variants failed: {failed}")


@app.callback()
def _root() -> None:
    """Adapt frozen image ViTs to video with Spatio-Temporal Adapters."""


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point that turns user errors into one line and an exit code."""
    logging.getLogger().setLevel(logging.ERROR)  # open_clip logs "no pretrained weights" at WARNING
    try:
        app(args=argv, prog_name="stadapt")  # click prints usage errors itself and exits 2
    except StadaptError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def run() -> None:
    sys.exit(main())
