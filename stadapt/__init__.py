"""stadapt: Spatio-Temporal Adapters for frozen image ViTs (ST-Adapter, NeurIPS 2022).

The Python API:
    recipe = stadapt.load_recipe("recipes/k400_vitb.yaml", overrides=["model.pretrained=none"])
    model = stadapt.build_model(recipe)          # float B×3×T×H×W → logits
    stadapt.save_adapter(model, "adapter.safetensors", recipe=recipe, class_names=names)
    model = stadapt.load_model("runs/latest")    # backbone rebuilt, adapter weights loaded

Names are imported on first use, so that `import stadapt` (and every data-loading worker
process) does not pay for torch and open_clip until it needs them.
"""

__all__ = ["Recipe", "build_model", "load_recipe", "load_model", "save_adapter"]
__version__ = "0.1.0"

_WHERE = {
    "Recipe": "stadapt.recipe",
    "load_recipe": "stadapt.recipe",
    "build_model": "stadapt.model.build",
    "save_adapter": "stadapt.model.artifact",
    "load_model": "stadapt.model.artifact",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'stadapt' has no attribute {name!r}")
