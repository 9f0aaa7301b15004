"""The compiled-model wrapper's own logic, on the CPU: which mode runs after a failure, that
inference outputs survive the next call (a CUDA graph replay overwrites its outputs), and the
padding of a short last batch. The graphs themselves are checked on a GPU (test_gpu.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stadapt.model.runtime import _CompiledWithFallback, inference_forward, maybe_compile


class Logits(nn.Linear):
    """A classifier's output structure, {head: logits}, on a linear layer."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"label": super().forward(x)}


class ReusedOutput:
    """A stand-in for a graph replay: one output buffer, overwritten at every call."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.buffer, self.shapes, self.grad_enabled = model, None, [], []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        self.grad_enabled.append(torch.is_grad_enabled())
        out = self.model(x)["label"]
        if self.buffer is None or self.buffer.shape != out.shape:
            self.buffer = torch.empty_like(out)
        return {"label": self.buffer.copy_(out)}


def compiler(outcomes: dict[str, object]):
    """A torch.compile stand-in: per mode, an exception to raise at the call, or a ReusedOutput."""
    calls = []

    def compile_fn(model, dynamic, mode="default"):
        calls.append(mode)
        outcome = outcomes[mode]
        if isinstance(outcome, BaseException):
            def fail(*args, **kwargs):
                raise outcome
            return fail
        outcomes[mode] = ReusedOutput(model)
        return outcomes[mode]

    return compile_fn, calls


def test_inference_outputs_are_copies_and_a_short_batch_is_padded():
    torch.manual_seed(0)
    model = Logits(4, 3)
    outcomes = {"reduce-overhead": None, "default": None}
    compile_fn, calls = compiler(outcomes)
    forward = _CompiledWithFallback(model, ("reduce-overhead", "default"), inference=True, batch_size=5,
                                    compile_fn=compile_fn)
    a, b = torch.randn(5, 4), torch.randn(2, 4)
    out_a = forward(a)
    out_b = forward(b)
    assert calls == ["reduce-overhead"] and forward.mode == "reduce-overhead"
    graphed = outcomes["reduce-overhead"]
    assert graphed.shapes == [(5, 4), (5, 4)] and graphed.grad_enabled == [False, False]
    assert out_b["label"].shape == (2, 3) and not out_b["label"].requires_grad
    with torch.no_grad():  # out_a survived the second call
        assert torch.allclose(out_a["label"], model(a)["label"]) and torch.allclose(out_b["label"], model(b)["label"])


def test_a_capture_failure_falls_back_to_the_plain_compiled_model_then_to_eager():
    model = Logits(4, 3)
    compile_fn, calls = compiler({"reduce-overhead": RuntimeError("CUDA error: operation not permitted when "
                                                                   "stream is capturing\nmore"),
                                  "default": None})
    forward = _CompiledWithFallback(model, ("reduce-overhead", "default"), inference=True, compile_fn=compile_fn)
    x = torch.randn(2, 4)
    with pytest.warns(UserWarning, match="mode reduce-overhead. failed, trying mode default: CUDA error"):
        out = forward(x)
    assert calls == ["reduce-overhead", "default"] and forward.mode == "default"
    with torch.no_grad():
        assert torch.allclose(out["label"], model(x)["label"])

    compile_fn, calls = compiler({"reduce-overhead": RuntimeError("capture"), "default": RuntimeError("triton")})
    forward = _CompiledWithFallback(model, ("reduce-overhead", "default"), inference=True, compile_fn=compile_fn)
    with pytest.warns(UserWarning) as warned:
        out = forward(x)
    assert [str(w.message).split(":")[0] for w in warned] == [
        "torch.compile (mode reduce-overhead) failed, trying mode default",
        "torch.compile (mode default) failed, running eagerly"]
    assert forward.compiled is None and forward.mode is None
    with torch.no_grad():
        assert torch.allclose(out["label"], model(x)["label"])


def test_out_of_memory_is_not_taken_for_a_compiler_failure():
    compile_fn, _ = compiler({"reduce-overhead": torch.OutOfMemoryError("CUDA out of memory"), "default": None})
    forward = _CompiledWithFallback(Logits(4, 3), ("reduce-overhead", "default"), inference=True,
                                    compile_fn=compile_fn)
    with pytest.raises(torch.OutOfMemoryError):
        forward(torch.randn(2, 4))
    assert forward.mode == "reduce-overhead"


def test_training_calls_keep_autograd_and_raise_runtime_errors_and_the_cpu_runs_the_model_itself():
    model = Logits(4, 3)
    compile_fn, _ = compiler({"max-autotune-no-cudagraphs": None})
    forward = _CompiledWithFallback(model, ("max-autotune-no-cudagraphs",), compile_fn=compile_fn)
    assert forward(torch.randn(2, 4))["label"].requires_grad
    compile_fn, _ = compiler({"default": RuntimeError("CUDA error: an illegal memory access was encountered")})
    forward = _CompiledWithFallback(model, ("default",), compile_fn=compile_fn)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        forward(torch.randn(2, 4))  # a training step's error is not hidden by running eagerly
    assert forward.mode == "default"
    cpu = torch.device("cpu")
    assert inference_forward(model, True, cpu) is model and maybe_compile(model, True, cpu) is model
