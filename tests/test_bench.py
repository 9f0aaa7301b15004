import json

import pytest
import torch

import stadapt
import stadapt.bench.model
from stadapt.bench.model import model_cost
from stadapt.cli import main

KEYS = {"trainable_params", "total_params", "gflops_per_view", "latency_ms", "throughput_clips_s", "train_clips_s",
        "peak_mem_mib", "device", "device_name", "impl", "batch_size", "recipe", "train_speedup_vs_reference",
        "train_peak_mem_ratio_vs_reference", "infer_speedup_vs_reference", "adapter_overhead_vs_backbone",
        "adapter_flops_vs_backbone", "executed_gflops_per_view", "projected_gpu_hours", "variants", "versions", "date"}


def test_cpu_json_for_the_demo_recipe(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["bench", "model", "--recipe", "demo", "--json", "--device", "cpu", "--steps", "2", "--warmup", "1"])
    captured = capsys.readouterr()
    assert code == 0
    result = json.loads(captured.out)  # stdout is exactly one JSON object
    assert KEYS <= set(result) and result["device"] == "cpu" and result["impl"] == "fast"
    assert result["batch_size"] == 2 and result["peak_mem_mib"] is None and "random" in result["weights"]
    assert set(result["versions"]) >= {"torch", "open_clip", "cuda"}
    fast, reference, backbone = (result["variants"][k] for k in ("fast", "reference", "backbone"))
    for variant in (fast, reference, backbone):
        assert variant["latency_ms"] > 0 and variant["throughput_clips_s"] > 0 and variant["gflops_per_view"] > 0
        assert variant["latency_steps"] == variant["infer_steps"] == 2
    assert fast["train_clips_s"] > 0 and reference["train_clips_s"] > 0 and backbone["train_clips_s"] is None
    assert fast["trainable_params"] == reference["trainable_params"] > backbone["trainable_params"]
    assert fast["total_params"] > backbone["total_params"] and fast["gflops_per_view"] > backbone["gflops_per_view"]
    assert result["trainable_params"] == fast["trainable_params"] and result["train_clips_s"] == fast["train_clips_s"]
    assert result["train_speedup_vs_reference"] == round(fast["train_clips_s"] / reference["train_clips_s"], 4)
    assert result["infer_speedup_vs_reference"] == round(
        fast["throughput_clips_s"] / reference["throughput_clips_s"], 4)
    assert result["adapter_overhead_vs_backbone"] == round(
        1 - fast["throughput_clips_s"] / backbone["throughput_clips_s"], 4)
    assert result["adapter_flops_vs_backbone"] == round(
        fast["executed_gflops_per_view"] / backbone["executed_gflops_per_view"] - 1, 4)
    # the fast path skips the last block's patch tokens; the reference runs the paper's count
    assert fast["executed_gflops_per_view"] < fast["gflops_per_view"] == reference["executed_gflops_per_view"]
    assert result["train_peak_mem_ratio_vs_reference"] is None
    demo = stadapt.load_recipe("demo").train
    assert result["projected_gpu_hours"] == round(demo.steps * demo.batch_size / fast["train_clips_s"] / 3600, 4)
    written = list((tmp_path / "benchmarks" / "results").glob("model-demo-cpu-fast-*.json"))
    assert len(written) == 1 and json.loads(written[0].read_text()) == result


def test_profile_splits_each_step_by_kind_of_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["bench", "model", "--recipe", "demo", "--device", "cpu", "--steps", "2", "--warmup", "1",
                 "--profile", "--out", "profiled.json"])
    out = capsys.readouterr().out
    assert code == 0 and "where the fast path's step time goes" in out
    result = json.loads((tmp_path / "profiled.json").read_text())
    fast = result["variants"]["fast"]
    flops = fast["executed_gflops_by_kind"]
    assert flops["attention"] > 0 and sum(flops.values()) == pytest.approx(fast["executed_gflops_per_view"], abs=1e-3)
    assert "training_ms_by_kind" not in result["variants"]["reference"]  # only the chosen path is profiled
    for phase, measured_clips_s in (("inference", fast["throughput_clips_s"]), ("training", fast["train_clips_s"])):
        times = result["time_by_kind"][phase]
        assert times["matrix products"] > 0 and times["attention"] > 0 and times["element-wise"] > 0
        kinds = [times[k] for k in ("matrix products", "attention", "element-wise", "other")]
        assert times["total"] == pytest.approx(sum(kinds), abs=2e-3)
        # the ceiling leaves out the element-wise work, so it lies above what the whole step reached
        assert times["clips_s_if_only_products_and_attention"] > measured_clips_s
    assert result["time_by_kind"]["inference"]["matrix_products_tflops"] > 0
    assert result["time_by_kind"]["training"]["matrix_products_tflops"] is None


@pytest.mark.parametrize("kernel, kind", [
    # names from a profile of the compiled K400 ViT-B/16 training step on an H100
    ("nvjet_sm90_tst_192x192_64x4_1x2_h_bz_coopB_bias_TNN", "matrix products"),
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float>", "matrix products"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x64_1x4x1", "attention"),
    ("void cudnn::fusion::compute_dot_do_o_specialized<true, 64>(void const*, void const*)", "attention"),
    ("triton_poi_fused_add_mul_sigmoid_sigmoid_backward_view_19", "element-wise"),
    ("triton_poi_fused_clone_permute_stack_21", "element-wise"),
    ("Memset (Device)", "other"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedOptimizerTensorListMetadata>", "other"),
    ("aten::addmm", "matrix products"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("aten::native_layer_norm", "element-wise"),
])
def test_kernels_are_sorted_by_kind_of_work(kernel, kind):
    assert stadapt.bench.model.kernel_kind(kernel) == kind


def test_k400_vitb_cost_matches_the_paper():
    recipe = stadapt.load_recipe("k400_vitb", ["model.pretrained=none"])
    cost = model_cost(stadapt.build_model(recipe), recipe, torch.device("cpu"))
    assert cost["trainable_params"] == 7_417_744
    assert cost["gflops_per_view"] == pytest.approx(303.3, rel=0.01)


def test_bad_options_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "model", "--recipe", "demo", "--impl", "turbo", "--device", "cpu"]) == 2
    assert main(["bench", "model", "--recipe", "demo", "--device", "tpu"]) == 2
    assert main(["bench", "model", "--recipe", "nope"]) == 2
    if not torch.cuda.is_available():
        assert main(["bench", "model", "--recipe", "demo", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 3 + (not torch.cuda.is_available()) and err.count("\n") == err.count("error:")
    assert not (tmp_path / "benchmarks").exists()


def _running_out_of_memory_in_training_on(impl: str, monkeypatch) -> None:
    """The training step of `impl`'s variants raises CUDA's out-of-memory error (simulated on CPU)."""
    real = stadapt.bench.model.training_step

    def training_step(model, forward, recipe, clips):
        step = real(model, forward, recipe, clips)
        if recipe.model.impl != impl:
            return step

        def out_of_memory() -> None:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        return out_of_memory

    monkeypatch.setattr(stadapt.bench.model, "training_step", training_step)


def test_a_reference_path_out_of_memory_is_reported_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _running_out_of_memory_in_training_on("reference", monkeypatch)
    assert main(["bench", "model", "--recipe", "demo", "--device", "cpu", "--steps", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "reference: out of GPU memory in training at batch 2" in out
    result = json.loads(next((tmp_path / "benchmarks" / "results").glob("model-demo-*.json")).read_text())
    reference = result["variants"]["reference"]
    assert reference["out_of_memory"] == "training" and reference["train_clips_s"] is None
    assert reference["throughput_clips_s"] > 0  # inference fitted and was measured
    assert result["train_clips_s"] > 0 and result["train_speedup_vs_reference"] is None
    assert result["infer_speedup_vs_reference"] > 0


def test_a_fast_path_out_of_memory_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _running_out_of_memory_in_training_on("fast", monkeypatch)
    assert main(["bench", "model", "--recipe", "demo", "--device", "cpu", "--steps", "1", "--warmup", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch-size 2" in err and "out of GPU memory in training" in err
    assert not (tmp_path / "benchmarks").exists()
