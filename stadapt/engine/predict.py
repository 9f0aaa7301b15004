"""`stadapt predict`: class probabilities for video files, with the trained run's test views.

The videos become a test dataset of the data pipeline, so a video is sampled, resized and
cropped exactly as in `stadapt eval`, and the clips of several videos share a forward pass.
With a timeline, an untrimmed video becomes a sequence of windows, each sampled over its
span as the recipe samples one clip. A file that cannot be read gets an error entry and the
others still get answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F
from rich.table import Table
from torch.utils.data import DataLoader

from stadapt.data import VIDEO_SUFFIXES, is_video_file
from stadapt.data.dataset import VideoDataset
from stadapt.data.decode import VideoReadError, read_frames
from stadapt.data.manifest import Sample
from stadapt.data.probe import UnreadableVideo, probe_video
from stadapt.engine.evaluate import check_input_size, micro_batch_size
from stadapt.engine.rundir import LATEST, TRAIN_DATA_FILE, read_train_data
from stadapt.errors import RecipeError, StadaptError
from stadapt.model.runtime import autocast, inference_forward, place_model
from stadapt.model.video_vit import VideoClassifier
from stadapt.recipe import Recipe, recipe_from_dict


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
            videos = sorted(p for p in path.rglob("*") if is_video_file(p))
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


def read_error(path: Path) -> str:
    """The decoder's one-line reason for a video the dataset could not read."""
    try:
        read_frames(path, [0])
    except VideoReadError as exc:
        return str(exc)
    return f"{path}: cannot decode the frames the test views need"


@dataclass
class Timeline:
    """--timeline: windows of `window_s` seconds every `stride_s` (None: the defaults of `window_sizes`)."""

    window_s: Optional[float] = None
    stride_s: Optional[float] = None


@dataclass
class VideoResult:
    """One input's answer: its JSON entry and, on a timeline, each window's probabilities (for plots)."""

    entry: dict[str, Any]
    windows: list[tuple[float, float]] = field(default_factory=list)
    window_probs: list[Optional[dict[str, torch.Tensor]]] = field(default_factory=list)


class Predictor:
    """A trained run on its device, scoring clips sampled and viewed as `stadapt eval` samples them."""

    def __init__(self, model_dir: Path, top_k: int = 5, views: Optional[str] = None,
                 device: Optional[torch.device] = None) -> None:
        from stadapt.model.artifact import load_model

        if top_k < 1:
            raise RecipeError(f"--top-k {top_k}: must be at least 1")
        self.model_dir = Path(model_dir)
        self.top_k = top_k
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model: VideoClassifier = load_model(model_dir, map_location=self.device).eval()
        self.recipe = with_views(self.model.recipe, views)
        place_model(self.model, self.device, self.recipe.train.precision)
        check_input_size(self.model, self.recipe)
        self.heads = list(self.model.class_names)
        views = self.recipe.data.test_views.temporal * self.recipe.data.test_views.spatial
        self.videos_per_batch = max(1, 2 * micro_batch_size(self.recipe, 1) // views)  # as eval
        # CUDA graphs of one batch shape: a short last batch is padded up to it.
        self.forward = inference_forward(self.model, self.recipe.train.compile, self.device,
                                         batch_size=self.videos_per_batch * views)

    @torch.no_grad()
    def score(self, samples: list[Sample]) -> Iterator[Optional[dict[str, torch.Tensor]]]:
        """Per sample, in order: {head: class probabilities averaged over the views}, or None if unreadable.

        Clips of consecutive samples (of one video or of many) share a forward pass.
        """
        if not samples:
            return
        recipe = self.recipe
        dataset = VideoDataset(samples, self.model.class_names, recipe.data, train=False, seed=recipe.train.seed)
        views = recipe.data.test_views.temporal * recipe.data.test_views.spatial
        per_batch = self.videos_per_batch
        workers = min(recipe.train.workers, 4) if len(samples) > 2 else 0
        loader = DataLoader(dataset, batch_size=per_batch, num_workers=workers,
                            pin_memory=self.device.type == "cuda")
        for batch in loader:
            ok = batch["ok"].bool()
            probs: dict[str, torch.Tensor] = {}
            if ok.any():
                clips = batch["clip"][ok].to(self.device, non_blocking=True)
                with autocast(self.device, recipe.train.precision):
                    out = self.forward(clips.flatten(0, 1))
                probs = {h: F.softmax(out[h].float(), dim=-1).view(int(ok.sum()), views, -1).mean(dim=1).cpu()
                         for h in self.heads}
            row = 0
            for readable in ok.tolist():
                if readable:
                    yield {h: p[row] for h, p in probs.items()}
                    row += 1
                else:
                    yield None

    def ranked(self, probs: dict[str, torch.Tensor]) -> Any:
        """The top-k list (one head) or {head: list} of a probability row."""
        ranked = {h: _top(probs[h], self.model.class_names[h], self.top_k) for h in self.heads}
        return ranked[self.heads[0]] if len(self.heads) == 1 else ranked

    def window_sizes(self, fps: float, timeline: Timeline) -> tuple[float, float]:
        """(window, stride) in seconds: by default the span of one clip as the recipe samples it
        (dense: frames × stride / fps; uniform: the median training video), the stride half of it."""
        d = self.recipe.data
        window = timeline.window_s
        if window is None:
            if d.sampling == "dense":
                window = d.num_frames * d.stride / fps
            else:
                window = read_train_data(self.model_dir).get("median_duration_s")
                if not window:
                    raise RecipeError(f"{self.model_dir}: no median training-video duration recorded "
                                      f"({TRAIN_DATA_FILE}); pass --window-s")
        stride = timeline.stride_s if timeline.stride_s is not None else window / 2
        if window <= 0 or stride <= 0:
            raise RecipeError(f"--window-s {window:g} / --stride-s {stride:g}: both must be positive")
        return window, stride

    def results(self, entries: list[tuple[str, Optional[str]]],
                timeline: Optional[Timeline] = None) -> Iterator[VideoResult]:
        """One VideoResult per input, in order, as soon as its last clip is scored."""
        plans: list[tuple[str, Optional[str], list[tuple[float, float]]]] = []
        samples: list[Sample] = []
        label = {head: 0 for head in self.heads}
        for video, error in entries:
            windows: list[tuple[float, float]] = []
            if error is None and timeline is not None:
                try:
                    info = probe_video(video)
                    if not info.fps > 0:
                        raise UnreadableVideo(video, "no frame rate, so no timeline in seconds")
                except UnreadableVideo as exc:
                    error = str(exc)
                else:
                    windows = timeline_windows(info.num_frames / info.fps, *self.window_sizes(info.fps, timeline))
                    samples += [Sample(Path(video), label, num_frames=info.num_frames,
                                       start_frame=round(a * info.fps),
                                       stop_frame=max(round(a * info.fps), round(b * info.fps) - 1))
                                for a, b in windows]
            elif error is None:
                samples.append(Sample(Path(video), label))
            plans.append((video, error, windows))
        scored = self.score(samples)
        for video, error, windows in plans:
            if error is not None:
                yield VideoResult({"video": video, "error": error})
            elif timeline is None:
                probs = next(scored)
                yield VideoResult({"video": video, "predictions": self.ranked(probs)} if probs is not None
                                  else {"video": video, "error": read_error(Path(video))})
            else:
                yield self._timeline_result(video, windows, [next(scored) for _ in windows])

    def _timeline_result(self, video: str, windows: list[tuple[float, float]],
                         probs: list[Optional[dict[str, torch.Tensor]]]) -> VideoResult:
        readable = [p for p in probs if p is not None]
        if not readable:
            return VideoResult({"video": video, "error": read_error(Path(video))})
        steps = [{"start_s": round(a, 3), "end_s": round(b, 3),
                  **({"predictions": self.ranked(p)} if p is not None
                     else {"error": "cannot decode the frames of this window"})}
                 for (a, b), p in zip(windows, probs)]
        mean = {h: torch.stack([p[h] for p in readable]).mean(dim=0) for h in self.heads}
        return VideoResult({"video": video, "predictions": self.ranked(mean), "timeline": steps}, windows, probs)


def timeline_windows(duration: float, window: float, stride: float) -> list[tuple[float, float]]:
    """[start, end) windows every `stride` seconds; the last one ends at the video's end, so that
    none is cut short and the tail is covered; a video shorter than a window is one window."""
    if duration <= window:
        return [(0.0, duration)]
    starts = [i * stride for i in range(int((duration - window) / stride + 1e-9) + 1)]
    if starts[-1] + window < duration - 1e-6:
        starts.append(duration - window)
    return [(start, start + window) for start in starts]


def predict(inputs: Iterable[str], model_dir: Path, top_k: int = 5, views: Optional[str] = None,
            device: Optional[torch.device] = None, timeline: Optional[Timeline] = None) -> list[dict[str, Any]]:
    """One entry per input video: {"video", "predictions": [{"label", "index", "score"}, ...]} or {"video", "error"}.

    With several heads (EPIC-Kitchens) "predictions" maps each head to its list. With a
    timeline each entry also has "timeline", a list of {"start_s", "end_s", "predictions"},
    and "predictions" is the mean of the windows' probabilities.
    """
    predictor = Predictor(model_dir, top_k, views, device)
    return [r.entry for r in predictor.results(expand_inputs(inputs), timeline)]


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


def timeline_table(results: list[dict[str, Any]], model_dir: Path) -> Table:
    """Per video, each window's span and its most probable class (first head's, with several)."""
    table = Table("video", "window", "label", "score", title=f"timeline of {model_dir}", title_justify="left")
    for entry in results:
        if "error" in entry:
            table.add_row(entry["video"], "", f"[red]{entry['error']}[/]", "")
            table.add_section()
            continue
        for i, window in enumerate(entry["timeline"]):
            span = f"{window['start_s']:.2f}–{window['end_s']:.2f} s"
            if "error" in window:
                table.add_row(entry["video"] if i == 0 else "", span, f"[red]{window['error']}[/]", "")
                continue
            ranked = window["predictions"]
            head, best = next(iter(ranked.items())) if isinstance(ranked, dict) else ("", ranked)
            top = best[0]
            label = f"{head}: {top['label']}" if head else top["label"]
            table.add_row(entry["video"] if i == 0 else "", span, label, f"{100 * top['score']:.1f}%")
        table.add_section()
    return table


def write_timeline_plots(results: list[VideoResult], class_names: dict[str, list[str]], folder: Path,
                         top: int = 5) -> list[Path]:
    """A PNG per readable video in `folder`: its top classes' probabilities over time. Files are
    named after the videos (a repeated name gets -2, -3, ...)."""
    from stadapt.engine.plots import plot_timeline

    if folder.exists() and not folder.is_dir():
        raise StadaptError(f"--out {folder}: not a directory (timeline plots go into one; a results file "
                           "ends in .jsonl)")
    written: list[Path] = []
    used: set[str] = set()
    for result in results:
        if "timeline" not in result.entry:
            continue
        stem = Path(result.entry["video"]).stem
        name, n = stem, 1
        while name in used:
            n += 1
            name = f"{stem}-{n}"
        used.add(name)
        path = folder / f"{name}.png"
        plot_timeline(result.windows, result.window_probs, class_names, path, result.entry["video"], top)
        written.append(path)
    return written
