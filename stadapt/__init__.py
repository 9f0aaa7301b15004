"""stadapt: Spatio-Temporal Adapters for frozen image ViTs (ST-Adapter, NeurIPS 2022).

The Python API:
    recipe = stadapt.load_recipe("recipes/k400_vitb.yaml", overrides=["model.pretrained=none"])
    model = stadapt.build_model(recipe)          # float B×3×T×H×W → logits
    stadapt.save_adapter(model, "adapter.safetensors", recipe=recipe, class_names=names)
    model = stadapt.load_model("runs/latest")    # backbone rebuilt, adapter weights loaded
"""

from stadapt.model.build import build_model
from stadapt.recipe import Recipe, load_recipe

__all__ = ["Recipe", "build_model", "load_recipe", "load_model", "save_adapter"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Artifacts pull in safetensors; import them on first use.
    if name in ("save_adapter", "load_model"):
        from stadapt.model import artifact

        return getattr(artifact, name)
    raise AttributeError(name)
