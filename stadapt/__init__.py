"""stadapt: Spatio-Temporal Adapters for frozen image ViTs (ST-Adapter, NeurIPS 2022).

The Python API:
    recipe = stadapt.load_recipe("recipes/k400_vitb.yaml", overrides=["model.pretrained=none"])
    model = stadapt.build_model(recipe)          # B×3×T×H×W (uint8, or float normalised) → logits
    stadapt.save_adapter(model, "adapter.safetensors", recipe=recipe, class_names=names)
    model = stadapt.load_model("runs/latest")    # backbone rebuilt, adapter weights loaded

A model with one label set returns its logits B×C; one with several (EPIC-Kitchens) returns
{head: logits}. Inside stadapt every model returns the dict.

Names are imported on first use, so that `import stadapt` (and every data-loading worker
process) does not pay for torch and open_clip until it needs them.
"""

__all__ = ["Recipe", "build_model", "load_recipe", "load_model", "save_adapter"]
__version__ = "0.1.0"

_WHERE = {
    "Recipe": "stadapt.recipe",
    "load_recipe": "stadapt.recipe",
    "save_adapter": "stadapt.model.artifact",
}


def build_model(recipe, device: str = "cpu"):
    """The recipe's model (stadapt.model.build.build_model) as users call it."""
    from stadapt.model.build import build_model as build

    return _public(build(recipe, device))


def load_model(source, map_location="cpu"):
    """A run directory's (or adapter file's) trained model (stadapt.model.artifact.load_model) as users call it."""
    from stadapt.model.artifact import load_model as load

    return _public(load(source, map_location))


def _public(model):
    model.unwrap_single_head = True
    return model


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'stadapt' has no attribute {name!r}")
