"""Cost of a recipe's model: parameters, FLOPs, latency, throughput, training speed, memory.

Timings drift between machines and runs, so one run measures three variants side by side
and reports ratios between them (docs/performance.md):
- the chosen path, from the recipe as given (by default the fast path: `model.impl=fast`,
  frozen weights in bf16, `train.compile` on CUDA);
- the reference path of the public ST-Adapter code (stadapt.engine.paths): `model.impl=reference`
  (nn.Conv3d, packed-qkv attention, every block in full), fp16 weights and autocast with a
  GradScaler, no compilation, unfused AdamW;
- the frozen backbone alone (`method=linear_probe`) on the chosen path, inference only.
Every variant is built with `build_model`, placed with `stadapt.model.runtime`, with
random weights, and goes through the same measuring function.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from rich.console import Console
from rich.table import Table
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from stadapt.bench.results import device_name, now, ratio, round4, versions, write_result
from stadapt.engine.evaluate import check_input_size
from stadapt.engine.paths import fused_adamw, reference_path
from stadapt.engine.schedule import build_optimizer
from stadapt.engine.train import classification_loss
from stadapt.errors import StadaptError
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
    """uint8 pixels, as the loaders hand them to the model (which normalises them itself)."""
    size = recipe.data.crop
    return torch.randint(0, 256, (batch, 3, recipe.data.num_frames, size, size), dtype=torch.uint8, device=device)


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
            # GFLOP/ms = TFLOP/s; three decimals, so that a tiny model's CPU rate does not round to 0
            products_tflops = round(gflops * batch_size / ms["matrix products"], 3)
        only_products_and_attention = round(batch_size / compute * 1e3, 1) if compute else None
        summary[phase] = {**ms, "total": round(sum(ms.values()), 3), "matrix_products_tflops": products_tflops,
                          "clips_s_if_only_products_and_attention": only_products_and_attention}
    return summary


def inference_step(forward: Callable, clips: torch.Tensor, precision: str) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad(), autocast(clips.device, precision):
            forward(clips)

    return step


def training_step(model: VideoClassifier, forward: Callable, recipe: Recipe,
                  clips: torch.Tensor) -> Callable[[], None]:
    """Forward, backward and the training engine's AdamW step and loss (random labels)."""
    optimizer = build_optimizer(model, recipe.train, clips.device, fused=fused_adamw(recipe))
    scaler = grad_scaler(clips.device, recipe.train.precision) or torch.amp.GradScaler(enabled=False)
    labels = {name: torch.randint(n, (clips.shape[0],), device=clips.device)
              for name, n in head_sizes(recipe.model).items()}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(clips.device, recipe.train.precision):
            out = forward(clips)
            loss = classification_loss(out, labels)
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


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------
# The benchmark


def variant_recipes(recipe: Recipe, impl: str) -> dict[str, tuple[Recipe, bool]]:
    """{name: (recipe, measure training)}: the chosen path, the published path, the backbone alone."""
    reference = reference_path(recipe)
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
        "adapter_overhead_vs_backbone": round4(1 - r) if (r := ratio(chosen["throughput_clips_s"],
                                                                      backbone["throughput_clips_s"])) else None,
        # what the overhead would be if the adapters ran at the backbone's FLOP rate
        "adapter_flops_vs_backbone": round4(chosen["executed_gflops_per_view"]
                                            / backbone["executed_gflops_per_view"] - 1),
        "projected_gpu_hours": round4(recipe.train.steps * recipe.train.batch_size / chosen["train_clips_s"] / 3600),
        **({"time_by_kind": profile_summary(chosen, settings.batch_size)}
           if profile else {}),
        "variants": variants,
        "versions": versions("stadapt", "torch", "open_clip", "cuda"),
        "date": now(),
        "resolved_recipe": recipe.to_dict(),
    }


def write_model_result(result: dict[str, Any], out: Optional[str | Path] = None) -> Path:
    """`out`, or benchmarks/results/model-<recipe>-<device>-<impl>-<time>.json."""
    return write_result(result, out, "model", Path(result["recipe"]).stem, result["device"], result["impl"])


# ---------------------------------------------------------------------------------------
# The result as tables


def print_model_result(console: Console, result: dict[str, Any], path: Path) -> None:
    """The variants side by side, the ratios between them and, with --profile, where the time goes."""
    def show(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"

    timed = (f"{result['steps']} timed steps" if result["budget_s"] is None
             else f"up to {result['steps']} timed steps within {result['budget_s']:g} s")
    table = Table("variant", "trainable", "GFLOPs/view", "executed", "latency ms", "infer clips/s", "train clips/s",
                  "train step ms", "train peak MiB",
                  title=f"bench model: {result['recipe']} on {result['device_name']}",
                  caption=f"batch {result['batch_size']}, {result['precision']}, {result['warmup']} warm-up, {timed}")
    for name, v in result["variants"].items():
        table.add_row(name, show(v["trainable_params"]), f"{v['gflops_per_view']:.4g}",
                      f"{v['executed_gflops_per_view']:.4g}", show(v["latency_ms"]),
                      show(v["throughput_clips_s"]), show(v["train_clips_s"]), show(v["train_step_ms"]),
                      show(v["train_peak_mem_mib"]))
    console.print(table)
    for name, v in result["variants"].items():
        if v["out_of_memory"]:
            console.print(f"{name}: out of GPU memory in {v['out_of_memory']} at batch {result['batch_size']}",
                          highlight=False)
    for key in ("train_speedup_vs_reference", "train_peak_mem_ratio_vs_reference", "infer_speedup_vs_reference",
                "adapter_overhead_vs_backbone", "adapter_flops_vs_backbone", "projected_gpu_hours"):
        value = result[key]
        console.print(f"{key}: {'-' if value is None else f'{value:.3f}'}", highlight=False)
    if "time_by_kind" in result:
        console.print(time_by_kind_table(result))
    console.print(f"latency run as: {result['latency_mode']} (mode of torch.compile; reduce-overhead = CUDA graphs); "
                  f"training and throughput: {result['compile_mode'] or 'eager'}", highlight=False)
    console.print(f"weights: {result['weights']}; wrote {path}", highlight=False)


def time_by_kind_table(result: dict[str, Any]) -> Table:
    table = Table("phase", *(f"{kind} ms" for kind in KINDS), "total ms", "products TFLOP/s",
                  "clips/s if only products + attention",
                  title=f"where the {result['impl']} path's step time goes",
                  caption=f"torch.profiler over {PROFILED_STEPS} steps: kernel time on a GPU, op time on a CPU")
    for phase, t in result["time_by_kind"].items():
        rate = t["matrix_products_tflops"]
        ceiling = t["clips_s_if_only_products_and_attention"]
        table.add_row(phase, *(f"{t[kind]:,.2f}" for kind in KINDS), f"{t['total']:,.2f}",
                      "-" if rate is None else f"{rate:,.1f}", "-" if ceiling is None else f"{ceiling:,.1f}")
    return table
