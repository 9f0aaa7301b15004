"""`stadapt predict`: class probabilities for video files, with the trained run's test views.

Each file becomes a one-sample test dataset of the data pipeline, so a video is sampled,
resized and cropped exactly as in `stadapt eval`. A file that cannot be read gets an error
entry and the others still get answers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
import torch.nn.functional as F
from rich.table import Table
from torch.utils.data import DataLoader

from stadapt.data.dataset import VideoDataset
from stadapt.data.decode import VideoReadError, read_frames
from stadapt.data.manifest import Sample
from stadapt.data.transforms import normalize
from stadapt.engine.evaluate import check_input_size
from stadapt.engine.rundir import LATEST
from stadapt.errors import RecipeError, StadaptError
from stadapt.model.runtime import autocast, inference_forward, place_model
from stadapt.model.video_vit import VideoClassifier
from stadapt.recipe import Recipe, recipe_from_dict

VIDEO_SUFFIXES = {".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"}


def resolve_model_dir(model: Optional[str]) -> Path:
    """--model, or runs/latest; a clear line when there is neither."""
    if model is not None:
        return Path(model)
    if not LATEST.exists():
        raise StadaptError(f"no trained model: {LATEST} does not exist here; train one (stadapt train RECIPE) "
                           "or pass --model RUN_DIR")
    return LATEST


def parse_views(text: str) -> tuple[int, int]:
    """'3x1' → (temporal 3, spatial 1)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not match:
        raise RecipeError(f"--views {text!r}: expected TEMPORALxSPATIAL, e.g. 3x1")
    return int(match.group(1)), int(match.group(2))


def expand_inputs(inputs: Iterable[str]) -> list[tuple[str, Optional[str]]]:
    """(video, error) per input in order; a directory expands to its videos, sorted."""
    out: list[tuple[str, Optional[str]]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            videos = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
            out += [(str(v), None) for v in videos]
            if not videos:
                out.append((item, f"{item}: no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) in this directory"))
        elif path.is_file():
            out.append((item, None))
        else:
            out.append((item, f"{item}: no such file"))
    return out


def with_views(recipe: Recipe, views: Optional[str]) -> Recipe:
    if views is None:
        return recipe
    temporal, spatial = parse_views(views)
    raw = recipe.to_dict()
    raw["data"]["test_views"] = {"temporal": temporal, "spatial": spatial}
    return recipe_from_dict(raw, source=f"--views {views}")


def _read_error(path: Path) -> str:
    """The decoder's one-line reason for a video the dataset could not read."""
    try:
        read_frames(path, [0])
    except VideoReadError as exc:
        return str(exc)
    return f"{path}: cannot decode the frames the test views need"


@torch.no_grad()
def predict(inputs: Iterable[str], model_dir: Path, top_k: int = 5, views: Optional[str] = None,
            device: Optional[torch.device] = None) -> list[dict[str, Any]]:
    """One entry per input video: {"video", "predictions": [{"label", "index", "score"}, ...]} or {"video", "error"}.

    With several heads (EPIC-Kitchens) "predictions" maps each head to its list.
    """
    from stadapt.model.artifact import load_model

    if top_k < 1:
        raise RecipeError(f"--top-k {top_k}: must be at least 1")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model: VideoClassifier = load_model(model_dir, map_location=device).eval()
    recipe = with_views(model.recipe, views)
    place_model(model, device, recipe.train.precision)
    check_input_size(model, recipe)
    forward = inference_forward(model, recipe.train.compile, device)  # CUDA graphs: one video's views per call
    entries = expand_inputs(inputs)
    readable = [Path(video) for video, error in entries if error is None]
    results: dict[str, dict[str, Any]] = {}
    if readable:
        heads = list(model.class_names)
        samples = [Sample(path, {head: 0 for head in heads}) for path in readable]
        dataset = VideoDataset(samples, model.class_names, recipe.data, train=False, seed=recipe.train.seed)
        workers = min(recipe.train.workers, 4) if len(samples) > 2 else 0
        for item in DataLoader(dataset, batch_size=None, num_workers=workers):
            path = readable[item["index"]]
            if not item["ok"]:
                results[str(path)] = {"video": str(path), "error": _read_error(path)}
                continue
            x = normalize(item["clip"].to(device), model.image_mean, model.image_std)
            with autocast(device, recipe.train.precision):
                out = forward(x)
            out = out if isinstance(out, dict) else {heads[0]: out}
            ranked = {head: _top(F.softmax(out[head].float(), dim=-1).mean(dim=0), model.class_names[head], top_k)
                      for head in heads}
            results[str(path)] = {"video": str(path),
                                  "predictions": ranked[heads[0]] if len(heads) == 1 else ranked}
    return [results[video] if error is None else {"video": video, "error": error} for video, error in entries]


def _top(probs: torch.Tensor, names: list[str], k: int) -> list[dict[str, Any]]:
    scores, indices = probs.topk(min(k, probs.numel()))
    return [{"label": names[i], "index": int(i), "score": round(float(s), 6)} for s, i in zip(scores, indices)]


def predictions_table(results: list[dict[str, Any]], model_dir: Path) -> Table:
    table = Table("video", "label", "score", title=f"predictions of {model_dir}", title_justify="left")
    for entry in results:
        if "error" in entry:
            table.add_row(entry["video"], f"[red]{entry['error']}[/]", "")
            continue
        ranked = entry["predictions"]
        lists = ranked.items() if isinstance(ranked, dict) else [("", ranked)]
        first = True
        for head, predictions in lists:
            for p in predictions:
                label = f"{head}: {p['label']}" if head else p["label"]
                table.add_row(entry["video"] if first else "", label, f"{100 * p['score']:.1f}%")
                first = False
        table.add_section()
    return table
