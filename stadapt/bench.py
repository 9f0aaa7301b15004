"""Cost of a recipe's model: parameters, FLOPs, latency, throughput, training speed, memory.

Timings drift between machines and runs, so one run measures three variants side by side
and reports ratios between them (docs/performance.md):
- the chosen path, from the recipe as given (by default the fast path: `model.impl=fast`,
  frozen weights in bf16, `train.compile` on CUDA);
- the reference path of the public ST-Adapter code: `model.impl=reference` (nn.Conv3d,
  packed-qkv attention, every block in full), fp16 weights and autocast with a GradScaler,
  no compilation;
- the frozen backbone alone (`method=linear_probe`) on the chosen path, inference only.
Every variant is built with `build_model`, placed with `stadapt.model.runtime`, with
random weights, and goes through the same measuring function.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import gc
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import open_clip
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import stadapt
from stadapt.errors import RecipeError, StadaptError
from stadapt.fileio import atomic_write_text
from stadapt.model.build import build_model, count_parameters, set_impl
from stadapt.model.runtime import (
    COMPILE_MODES,
    autocast,
    compute_dtype,
    grad_scaler,
    inference_forward,
    maybe_compile,
    place_model,
)
from stadapt.model.video_vit import VideoClassifier
from stadapt.recipe import Recipe, head_sizes

RESULTS_DIR = Path("benchmarks/results")
IMPLS = ("fast", "reference")


@dataclass
class Settings:
    """How to measure: where, at which batch size, how many warm-up and timed steps."""

    device: torch.device
    batch_size: int
    steps: int  # timed steps per measurement (at most, when there is a budget)
    warmup: int
    budget_s: Optional[float] = None  # stop timing once this is spent (at least one step); CPU defaults only
    compile_mode: str = "default"  # torch.compile mode of the compiled paths' training and throughput


def make_settings(recipe: Recipe, device: Optional[str] = None, batch_size: Optional[int] = None,
                  steps: Optional[int] = None, warmup: Optional[int] = None, compile_mode: str = "default") -> Settings:
    """Defaults per device: a GPU times 20 steps after 5 warm-up steps; the CPU, after one
    warm-up step, times up to 10 steps within one second, so that a ViT-B/16 recipe stays
    well under a minute on two cores while a tiny model still gets several steps.
    """
    target = resolve_device(device)
    on_gpu = target.type == "cuda"
    return Settings(
        device=target,
        batch_size=batch_size if batch_size is not None else (32 if on_gpu else 2),
        steps=steps if steps is not None else (20 if on_gpu else 10),
        warmup=warmup if warmup is not None else (5 if on_gpu else 1),
        budget_s=None if on_gpu or steps is not None else 1.0,
        compile_mode=compile_mode,
    )


def resolve_device(name: Optional[str]) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise StadaptError(f"--device {name!r}: expected cpu or cuda") from None
    if device.type not in ("cpu", "cuda"):
        raise StadaptError(f"--device {name!r}: expected cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StadaptError(f"--device {name}: no CUDA device is available here (torch {torch.__version__})")
    return device


# ---------------------------------------------------------------------------------------
# Parameters and FLOPs


@contextlib.contextmanager
def countable_attention() -> Iterator[None]:
    """Route attention through plain matrix products, which FlopCounterMode sees.

    nn.MultiheadAttention's fused inference path and the CPU flash-attention kernel are
    single opaque ops the counter has no formula for; without this, a ViT-B/16 view
    would count about 200 GFLOPs instead of 303.
    """
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def model_cost(model: VideoClassifier, recipe: Recipe, device: torch.device,
               precision: str = "fp32") -> dict[str, Any]:
    """Trainable and total parameters, and forward GFLOPs (2 × multiply-adds) of one view.

    `gflops_per_view` is the paper's count, every token through every block as the published
    code computes them (the reference path); `executed_gflops_per_view` is what the model's
    own path runs, less on the fast path, which skips the last block's patch tokens (the head
    never reads them). `executed_gflops_by_kind` splits it into attention and the other
    matrix products (for `--profile`'s rate of the products).
    """
    trainable, total = count_parameters(model)
    was_training, impl = model.training, model.impl
    model.eval()
    try:
        paper = forward_flops_by_kind(model, recipe, device, precision, "reference")
        executed = forward_flops_by_kind(model, recipe, device, precision, impl)
    finally:
        set_impl(model, impl)
        model.train(was_training)
    return {"trainable_params": trainable, "total_params": total, "gflops_per_view": _gflops(sum(paper.values())),
            "executed_gflops_per_view": _gflops(sum(executed.values())),
            "executed_gflops_by_kind": {kind: _gflops(flops) for kind, flops in executed.items()}}


def forward_flops_by_kind(model: VideoClassifier, recipe: Recipe, device: torch.device, precision: str,
                          impl: str) -> dict[str, int]:
    """FLOPs of one view's forward pass on the `impl` path: {"attention": the batched products
    of attention, "matrix products": the rest (projections, MLPs, adapters, patch embedding)}."""
    set_impl(model, impl)
    with torch.no_grad(), autocast(device, precision), countable_attention(), FlopCounterMode(display=False) as counter:
        model(random_clips(recipe, 1, device))
    by_op = counter.get_flop_counts()["Global"]
    attention = sum(flops for op, flops in by_op.items() if str(op) in ("aten.bmm", "aten.baddbmm"))
    return {"matrix products": counter.get_total_flops() - attention, "attention": attention}


def _gflops(flops: int) -> float:
    return round(flops / 1e9, 3)


# ---------------------------------------------------------------------------------------
# Timing


def random_clips(recipe: Recipe, batch: int, device: torch.device) -> torch.Tensor:
    size = recipe.data.crop
    return torch.randn(batch, 3, recipe.data.num_frames, size, size, device=device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_step(step: Callable[[], None], settings: Settings) -> tuple[float, int]:
    """Warm up, synchronise, then time calls of `step` on the device: (seconds per step, steps)."""
    for _ in range(settings.warmup):
        step()
    synchronize(settings.device)
    start = time.perf_counter()
    done = 0
    while done < settings.steps:
        step()
        done += 1
        if settings.budget_s is not None and time.perf_counter() - start >= settings.budget_s:
            break
    synchronize(settings.device)
    return (time.perf_counter() - start) / done, done


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> Optional[float]:
    """Peak allocated memory since the last reset; the CPU has no such counter (None)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


# ---------------------------------------------------------------------------------------
# Where the time goes (--profile)

KINDS = ("matrix products", "attention", "element-wise", "other")
PROFILED_STEPS = 3


def kernel_kind(name: str) -> str:
    """One of KINDS for a CUDA kernel or a CPU aten op, by its name.

    Element-wise covers everything memory-bound: the compiler's fused kernels (LayerNorm,
    QuickGELU, residual adds, the adapter's time shifts), copies and reductions. Other is
    memory transfers and fills and the optimiser.
    """
    n = name.lower()
    if any(k in n for k in ("attention", "flash", "fmha", "sdpa", "cudnn::fusion")):
        return "attention"
    if any(k in n for k in ("gemm", "gemv", "nvjet", "cutlass", "xmma", "splitk", "convolution",
                            "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")):
        return "matrix products"
    if any(k in n for k in ("memcpy", "memset", "multi_tensor_apply", "adam")):
        return "other"
    return "element-wise"


def time_by_kind(step: Callable[[], None], device: torch.device) -> dict[str, float]:
    """Milliseconds per call of `step` in each of KINDS, from torch.profiler: the kernels' time
    on a GPU, the aten ops' own time on the CPU. Gaps between kernels are not counted."""
    from torch.profiler import ProfilerActivity, profile

    on_gpu = device.type == "cuda"
    # acc_events: one profiler object per call, so nothing to clear; without it torch warns on a GPU
    with profile(activities=[ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU], acc_events=True) as prof:
        for _ in range(PROFILED_STEPS):
            step()
        synchronize(device)
    ms = dict.fromkeys(KINDS, 0.0)
    for event in prof.key_averages():
        if on_gpu:
            ms[kernel_kind(event.key)] += event.self_device_time_total / 1e3 / PROFILED_STEPS
        elif event.key.startswith("aten::"):
            ms[kernel_kind(event.key)] += event.self_cpu_time_total / 1e3 / PROFILED_STEPS
    return {kind: round(value, 3) for kind, value in ms.items()}


def profile_summary(figures: dict[str, Any], batch_size: int) -> dict[str, dict[str, Optional[float]]]:
    """Per phase: milliseconds by kind, the matrix products' rate (inference, where the forward
    FLOPs are known) and the clips/s the step would reach if only the matrix products and
    attention took time: the ceiling that fusing element-wise work could approach."""
    summary = {}
    for phase in ("inference", "training"):
        ms = figures.get(f"{phase}_ms_by_kind")
        if not ms:
            continue
        compute = ms["matrix products"] + ms["attention"]
        products_tflops = None
        if phase == "inference" and ms["matrix products"] > 0:
            gflops = figures["executed_gflops_by_kind"]["matrix products"]
            products_tflops = round(gflops * batch_size / ms["matrix products"], 1)  # GFLOP/ms = TFLOP/s
        summary[phase] = {**ms, "total": round(sum(ms.values()), 3), "matrix_products_tflops": products_tflops,
                          "clips_s_if_only_products_and_attention": round(batch_size / compute * 1e3, 1) if compute else None}
    return summary


def inference_step(forward: Callable, clips: torch.Tensor, precision: str) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad(), autocast(clips.device, precision):
            forward(clips)

    return step


def training_step(model: VideoClassifier, forward: Callable, recipe: Recipe,
                  clips: torch.Tensor) -> Callable[[], None]:
    """Forward, backward and an AdamW step on the trainable parameters (random labels)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = clips.device.type == "cuda" and recipe.model.impl == "fast"  # the public code's AdamW is not fused
    optimizer = torch.optim.AdamW(params, lr=recipe.train.lr, weight_decay=recipe.train.weight_decay, fused=fused)
    scaler = grad_scaler(clips.device, recipe.train.precision) or torch.amp.GradScaler(enabled=False)
    labels = {name: torch.randint(n, (clips.shape[0],), device=clips.device)
              for name, n in head_sizes(recipe.model).items()}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(clips.device, recipe.train.precision):
            out = forward(clips)
            logits = out if isinstance(out, dict) else {"label": out}
            loss = sum(F.cross_entropy(logits[name].float(), labels[name]) for name in labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def measure_variant(recipe: Recipe, settings: Settings, train: bool, profile: bool = False) -> dict[str, Any]:
    """Everything measured for one variant: cost, latency, throughput, training, memory; with
    `profile`, also where the inference and training steps spend their time (time_by_kind)."""
    model = build_model(recipe)
    check_input_size(model, recipe)
    place_model(model, settings.device, recipe.train.precision)
    precision = recipe.train.precision
    dtype = compute_dtype(settings.device, precision)
    figures: dict[str, Any] = dict(model_cost(model, recipe, settings.device, precision))
    forward = maybe_compile(model, recipe.train.compile, settings.device, settings.compile_mode)
    figures.update(precision=str(dtype).replace("torch.", ""), compiled=forward is not model,
                   compile_mode=settings.compile_mode if forward is not model else None)
    figures.update(latency_ms=None, latency_steps=None, latency_mode=None, latency_cudagraph_skips=None,
                   throughput_clips_s=None, infer_step_ms=None,
                   infer_steps=None, infer_peak_mem_mib=None, train_clips_s=None, train_step_ms=None,
                   train_steps=None, train_peak_mem_mib=None, out_of_memory=None)
    try:
        model.eval()
        reset_peak_memory(settings.device)
        # latency as predict and eval run the model: CUDA graphs of the compiled model
        single = inference_forward(model, recipe.train.compile, settings.device)
        skips = cudagraph_skips()
        latency, latency_steps = seconds_per_step(
            inference_step(single, random_clips(recipe, 1, settings.device), precision), settings)
        figures.update(latency_ms=round(latency * 1e3, 3), latency_steps=latency_steps,
                       latency_mode=getattr(single, "mode", None) if single is not model else "eager",
                       latency_cudagraph_skips=cudagraph_skips() - skips)
        del single
        batch = random_clips(recipe, settings.batch_size, settings.device)
        if settings.batch_size > 1:
            reset_peak_memory(settings.device)
            infer, infer_steps = seconds_per_step(inference_step(forward, batch, precision), settings)
        else:
            infer, infer_steps = latency, latency_steps  # batch 1: the latency run is the throughput run
        figures.update(throughput_clips_s=round(settings.batch_size / infer, 3), infer_step_ms=round(infer * 1e3, 3),
                       infer_steps=infer_steps, infer_peak_mem_mib=peak_memory_mib(settings.device))
        if profile:
            figures["inference_ms_by_kind"] = time_by_kind(inference_step(forward, batch, precision), settings.device)
        if train:
            model.train()
            reset_peak_memory(settings.device)
            train_step = training_step(model, forward, recipe, batch)
            step, train_steps = seconds_per_step(train_step, settings)
            figures.update(train_clips_s=round(settings.batch_size / step, 3), train_step_ms=round(step * 1e3, 3),
                           train_steps=train_steps, train_peak_mem_mib=peak_memory_mib(settings.device))
            if profile:
                figures["training_ms_by_kind"] = time_by_kind(train_step, settings.device)
    except torch.OutOfMemoryError:
        # A larger batch than the reference path can hold is a result, not a failure: the
        # variant's remaining figures stay empty and the run goes on.
        figures["out_of_memory"] = "training" if figures["throughput_clips_s"] is not None else "inference"
    return figures


def cudagraph_skips() -> int:
    """How often inductor has compiled a graph without CUDA graphs (it logs why) in this process."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def check_input_size(model: VideoClassifier, recipe: Recipe) -> None:
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    if recipe.data.crop != size:
        raise RecipeError(f"data.crop = {recipe.data.crop}: {recipe.model.backbone} takes {size}×{size} frames")


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------
# The benchmark


def variant_recipes(recipe: Recipe, impl: str) -> dict[str, tuple[Recipe, bool]]:
    """{name: (recipe, measure training)}: the chosen path, the published path, the backbone alone."""
    reference = copy.deepcopy(recipe)
    reference.model.impl, reference.train.precision, reference.train.compile = "reference", "fp16", False
    chosen = reference if impl == "reference" else copy.deepcopy(recipe)
    chosen.model.impl = impl
    backbone = copy.deepcopy(chosen)
    backbone.model.method = "linear_probe"
    return {impl: (chosen, True), "reference": (reference, True), "backbone": (backbone, False)}


def bench_model(recipe: Recipe, recipe_name: str, impl: str = "fast", device: Optional[str] = None,
                batch_size: Optional[int] = None, steps: Optional[int] = None,
                warmup: Optional[int] = None, profile: bool = False, compile_mode: str = "default") -> dict:
    """Measure the recipe's model (random weights) and return the result as a JSON-ready dict.

    With `profile`, the chosen path's steps are also profiled (after timing, so the profiler
    does not slow the timed steps): the result's `time_by_kind`. `compile_mode` is the
    torch.compile mode of the chosen path's training and batch throughput (COMPILE_MODES);
    latency always runs as predict and eval run the model (runtime.inference_forward).
    """
    if impl not in IMPLS:
        raise StadaptError(f"--impl {impl!r}: expected one of {', '.join(IMPLS)}")
    if compile_mode not in COMPILE_MODES:
        raise StadaptError(f"--compile-mode {compile_mode!r}: expected one of {', '.join(COMPILE_MODES)}")
    recipe = copy.deepcopy(recipe)
    recipe.model.pretrained = "none"  # timing does not depend on the weights; no download
    recipe.model.init_from = None
    settings = make_settings(recipe, device, batch_size, steps, warmup, compile_mode)
    torch.manual_seed(recipe.train.seed)
    variants = {}
    for name, (variant, train) in variant_recipes(recipe, impl).items():
        variants[name] = measure_variant(variant, settings, train, profile=profile and name == impl)
        release_memory(settings.device)
        if name == impl and variants[name]["out_of_memory"]:
            raise StadaptError(f"--batch-size {settings.batch_size}: {recipe_name} runs out of GPU memory in "
                               f"{variants[name]['out_of_memory']} on the {impl} path; try a smaller batch")
    chosen, reference, backbone = variants[impl], variants["reference"], variants["backbone"]
    return {
        "benchmark": "model",
        "recipe": recipe_name,
        "device": settings.device.type,
        "device_name": device_name(settings.device),
        "impl": impl,
        "batch_size": settings.batch_size,
        "precision": chosen["precision"],
        "compiled": chosen["compiled"],
        "compile_mode": chosen["compile_mode"],
        "latency_mode": chosen["latency_mode"],
        "steps": settings.steps,
        "warmup": settings.warmup,
        "budget_s": settings.budget_s,
        "weights": "random (model.pretrained=none)",
        "trainable_params": chosen["trainable_params"],
        "total_params": chosen["total_params"],
        "gflops_per_view": chosen["gflops_per_view"],
        "executed_gflops_per_view": chosen["executed_gflops_per_view"],
        "latency_ms": chosen["latency_ms"],
        "throughput_clips_s": chosen["throughput_clips_s"],
        "train_clips_s": chosen["train_clips_s"],
        "train_step_ms": chosen["train_step_ms"],
        "peak_mem_mib": chosen["train_peak_mem_mib"],
        "train_speedup_vs_reference": ratio(chosen["train_clips_s"], reference["train_clips_s"]),
        "train_peak_mem_ratio_vs_reference": ratio(chosen["train_peak_mem_mib"], reference["train_peak_mem_mib"]),
        "infer_speedup_vs_reference": ratio(chosen["throughput_clips_s"], reference["throughput_clips_s"]),
        "adapter_overhead_vs_backbone": _round(1 - r) if (r := ratio(chosen["throughput_clips_s"],
                                                                      backbone["throughput_clips_s"])) else None,
        # what the overhead would be if the adapters ran at the backbone's FLOP rate
        "adapter_flops_vs_backbone": _round(chosen["executed_gflops_per_view"] / backbone["executed_gflops_per_view"] - 1),
        "projected_gpu_hours": _round(recipe.train.steps * recipe.train.batch_size / chosen["train_clips_s"] / 3600),
        **({"time_by_kind": profile_summary(chosen, settings.batch_size)}
           if profile else {}),
        "variants": variants,
        "versions": {"stadapt": stadapt.__version__, "torch": torch.__version__,
                     "open_clip": open_clip.__version__, "cuda": torch.version.cuda},
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "resolved_recipe": recipe.to_dict(),
    }


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    if numerator is None or not denominator:
        return None
    return _round(numerator / denominator)


def _round(value: float) -> float:
    return round(value, 4)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.machine()} CPU ({torch.get_num_threads()} threads)"


def write_result(result: dict, out: Optional[str | Path] = None) -> Path:
    """Write the result atomically: `out`, or benchmarks/results/model-<recipe>-<device>-<impl>-<time>.json."""
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = RESULTS_DIR / f"model-{Path(result['recipe']).stem}-{result['device']}-{result['impl']}-{stamp}.json"
    out = Path(out)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return out


# ---------------------------------------------------------------------------------------
# A finished (or running) training run, end to end


def bench_run(run_dir: Path, skip: int = 1, model_result: Optional[Path] = None,
              baseline: Optional[Path] = None) -> dict:
    """Steady-state training throughput of a `stadapt train` run, loader included.

    The median clips/s of the logged windows after the first `skip` ones (compilation and
    warm-up), for all processes together. With the JSON of `stadapt bench model` for the
    same recipe and per-process batch, the ratio says whether the data pipeline keeps up with
    the model; with the JSON of this command for a one-process run (`baseline`), the scaling
    efficiency says what the extra processes bought: clips/s per process over the baseline's.
    """
    import statistics

    import yaml

    from stadapt.recipe import recipe_from_dict

    metrics = run_dir / "metrics.jsonl"
    try:
        entries = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
        recipe = recipe_from_dict(yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8")),
                                  source=str(run_dir / "recipe.yaml"))
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise StadaptError(f"{run_dir}: not a readable run directory ({exc})") from None
    logged = [e for e in entries if "clips_per_s" in e]
    if len(logged) <= skip:
        raise StadaptError(f"{metrics}: {len(logged)} logged windows, need more than --skip {skip}")
    clips_per_s = statistics.median(e["clips_per_s"] for e in logged[skip:])
    world_size = logged[-1].get("world_size", 1)  # runs logged before world_size was recorded ran one process
    per_process = clips_per_s / world_size
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {
        "benchmark": "run",
        "run_dir": str(run_dir),
        "recipe": recipe.to_dict(),
        "batch_size": recipe.train.batch_size,
        "world_size": world_size,
        "steps_logged": entries[-1].get("step"),
        "windows_used": len(logged) - skip,
        "clips_per_s": _round(clips_per_s),
        "clips_per_s_per_process": _round(per_process),
        "projected_gpu_hours_full_schedule": None,
        "model_only_train_clips_s": None,
        "end_to_end_vs_model_only": None,
        "baseline_clips_per_s_per_process": None,
        "scaling_efficiency": None,
        "device": device.type,
        "device_name": device_name(device),
        "versions": {"stadapt": stadapt.__version__, "torch": torch.__version__, "cuda": torch.version.cuda},
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if model_result is not None:
        model = _read_result(model_result, "train_clips_s")
        result["model_only_train_clips_s"] = model["train_clips_s"]
        result["end_to_end_vs_model_only"] = ratio(per_process, model["train_clips_s"])
        full = copy.deepcopy(model["resolved_recipe"]["train"])
        result["projected_gpu_hours_full_schedule"] = _round(full["steps"] * full["batch_size"] / per_process / 3600)
    if baseline is not None:
        base = _read_result(baseline, "clips_per_s_per_process")
        result["baseline_clips_per_s_per_process"] = base["clips_per_s_per_process"]
        result["scaling_efficiency"] = ratio(per_process, base["clips_per_s_per_process"])
    return result


def _read_result(path: Path, key: str) -> dict:
    """A benchmark JSON that must hold `key`; a one-line error otherwise."""
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StadaptError(f"{path}: not a readable benchmark result ({exc})") from None
    if not isinstance(result, dict) or result.get(key) is None:
        raise StadaptError(f"{path}: no {key!r} in it; is it the right kind of benchmark result?")
    return result
