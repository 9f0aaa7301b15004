"""Running a model on its device: precision, placement and compilation, fast or as published.

What the fast path does, each bought by measurement (benchmarks/results/, README):
- frozen weights are stored in the compute dtype (bf16), so autocast does not cast the
  backbone again at every step; trainable weights stay fp32 for the optimiser;
- the model is compiled with torch.compile, static shapes (inductor fuses LayerNorm,
  QuickGELU, the residual adds and the adapter's time-shifted sums, and its min-cut
  partitioner saves less for backward); if compilation fails the model runs eagerly,
  with one warning;
- inference (predict, eval, explain, bench model's latency) replays CUDA graphs
  (`inference_forward`, torch.compile mode="reduce-overhead"): at batch 1 the step is
  bound by kernel launches, which a graph replay removes. If graphs cannot be captured it
  runs the plain compiled model, then the eager one.
The model itself contributes the rest of the fast path (`model.impl = "fast"`): the
adapter's time-shifted sums, the patch embedding as one matrix product and the CLS-only
last block (stadapt.model.adapter, stadapt.model.video_vit).
The reference path is the public ST-Adapter code's: frozen weights in fp16, fp16 autocast
with a GradScaler, depth-wise nn.Conv3d adapters, attention as one packed qkv product (as
that code computes it), every block in full, no compilation.
The CPU always runs fp32: CPU bf16 is slow, and the tests pin fp32 results.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, ContextManager, Optional, Sequence

import torch
from torch import nn

from stadapt.errors import first_line

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def configure_backends(device: torch.device) -> None:
    """TF32 for the fp32 matmuls autocast leaves, and cuDNN autotuning (fixed clip shapes)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def compute_dtype(device: torch.device, precision: str) -> torch.dtype:
    """The autocast dtype: the recipe's precision on GPU, fp32 on CPU."""
    return DTYPES[precision] if device.type == "cuda" else torch.float32


def autocast(device: torch.device, precision: str) -> ContextManager:
    dtype = compute_dtype(device, precision)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> Optional[torch.amp.GradScaler]:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
    if compute_dtype(device, precision) == torch.float16:
        return torch.amp.GradScaler(device.type)
    return None


def place_model(model: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """Move to `device`; on GPU store frozen weights in the compute dtype."""
    model.to(device)
    dtype = compute_dtype(device, precision)
    if dtype != torch.float32:
        for param in model.parameters():
            if not param.requires_grad:
                param.data = param.data.to(dtype)
    return model


COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")  # modes for training and batch throughput


def maybe_compile(model: nn.Module, enabled: bool, device: torch.device, mode: str = "default") -> Callable[..., Any]:
    """torch.compile on CUDA when enabled; the eager model otherwise or when compiling fails."""
    if not enabled or device.type != "cuda":
        return model
    return _CompiledWithFallback(model, (mode,))


def inference_forward(model: nn.Module, enabled: bool, device: torch.device,
                      batch_size: Optional[int] = None) -> Callable[..., Any]:
    """The model for inference: CUDA graphs of the compiled model on CUDA when enabled, the
    model itself otherwise. Runs without autograd and returns outputs of its own (a graph
    replay overwrites its outputs, so they are cloned). With `batch_size`, a smaller batch
    (the last of an eval) is padded up to it, so that no second graph is compiled for it."""
    if not enabled or device.type != "cuda":
        return model
    return _CompiledWithFallback(model, ("reduce-overhead", "default"), inference=True, batch_size=batch_size)


class _CompiledWithFallback:
    """Calls the model compiled in the first of `modes`; on an error of the compiler (or, for
    inference, of graph capture) warns once and moves to the next mode, after the last to the
    eager model."""

    def __init__(self, model: nn.Module, modes: Sequence[str], inference: bool = False,
                 batch_size: Optional[int] = None, compile_fn: Callable[..., Any] = torch.compile) -> None:
        self.model = model
        self.modes = list(modes)
        self.inference = inference
        self.batch_size = batch_size
        self._compile_fn = compile_fn
        self.mode: Optional[str] = None
        self.compiled: Callable[..., Any] | None = None
        self._next_mode()

    def _next_mode(self) -> None:
        self.mode = self.modes.pop(0) if self.modes else None
        # Static shapes: a second batch size (latency at 1, throughput at 32, a last partial
        # batch) gets its own specialised graph instead of one slower symbolic-shape graph.
        options = {} if self.mode in (None, "default") else {"mode": self.mode}
        self.compiled = None if self.mode is None else self._compile_fn(self.model, dynamic=False, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.inference:
            return self._run(*args, **kwargs)
        x, rest = args[0], args[1:]
        n = x.shape[0]
        if self.batch_size is not None and n < self.batch_size:
            x = torch.cat([x, x.new_zeros((self.batch_size - n, *x.shape[1:]))])
        with torch.no_grad():
            out = self._run(x, *rest, **kwargs)
        return {name: value[:n].clone() for name, value in out.items()}

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        # inductor/triton could not build it; in inference also: a CUDA graph could not be captured.
        # Training raises any other error, as the eager model would.
        failures = (torch._dynamo.exc.BackendCompilerFailed, RuntimeError) if self.inference else \
            (torch._dynamo.exc.BackendCompilerFailed,)
        while self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except torch.OutOfMemoryError:
                raise
            except failures as exc:
                then = f"trying mode {self.modes[0]}" if self.modes else "running eagerly"
                warnings.warn(f"torch.compile (mode {self.mode}) failed, {then}: {first_line(exc, 200)}",
                              stacklevel=3)
                self._next_mode()
        return self.model(*args, **kwargs)
