"""The reference path (the public ST-Adapter code's settings) comes from one place for train and bench."""

import pytest

import stadapt
from stadapt.engine import train as train_module
from stadapt.engine.paths import as_run, fused_adamw
from stadapt.engine.train import train
from stadapt.recipe import load_recipe

TINY = ["model.num_classes=4", "train.steps=1", "train.batch_size=2", "train.workers=0", "train.precision=bf16",
        "train.compile=true"]


def test_model_impl_reference_runs_the_published_settings():
    reference = as_run(load_recipe("demo", ["model.impl=reference", "train.precision=bf16", "train.compile=true"]))
    assert (reference.model.impl, reference.train.precision, reference.train.compile) == ("reference", "fp16", False)
    assert not fused_adamw(reference)
    fast = load_recipe("demo", ["train.precision=bf16", "train.compile=true"])
    assert as_run(fast) is fast and fused_adamw(fast)


@pytest.mark.parametrize("impl, chosen, precision", [
    ("reference", {"compile": False, "fused": False}, "fp16"),
    ("fast", {"compile": True, "fused": True}, "bf16"),
])
def test_train_takes_the_path_settings(prepared_dir, tmp_path, monkeypatch, impl, chosen, precision):
    """What the trainer asks of torch.compile and AdamW (the CPU then runs eager, unfused and fp32 anyway)."""
    seen = {}
    build_optimizer = train_module.build_optimizer

    def record_compile(model, enabled, device):
        seen["compile"] = enabled
        return model

    def record_optimizer(model, cfg, device, fused=True):
        seen["fused"] = fused
        return build_optimizer(model, cfg, device, fused)

    monkeypatch.setattr(train_module, "maybe_compile", record_compile)
    monkeypatch.setattr(train_module, "build_optimizer", record_optimizer)
    monkeypatch.chdir(tmp_path)
    result = train("demo", [*TINY, f"data.root={prepared_dir}", f"model.impl={impl}"], out="run")
    assert result.completed and seen == chosen
    trained = stadapt.load_model(result.run_dir).recipe
    assert (trained.model.impl, trained.train.precision) == (impl, precision)
