"""The two ways a recipe runs: the fast path (the default) and the public ST-Adapter code's.

The reference path is what the published code does: depth-wise nn.Conv3d adapters, attention
as one packed qkv product and every block in full (`model.impl = reference`), frozen weights
in fp16 under fp16 autocast with a GradScaler, no compilation, and AdamW one tensor at a
time (not fused). `stadapt train --set model.impl=reference` trains that way, whatever
train.precision and train.compile say, and `stadapt bench model` measures it as the
baseline of its ratios: both take the settings from here. (The CPU runs fp32 either way.)
"""

from __future__ import annotations

import copy

from stadapt.recipe import Recipe


def reference_path(recipe: Recipe) -> Recipe:
    """A copy of `recipe` set to run as the published code does."""
    reference = copy.deepcopy(recipe)
    reference.model.impl = "reference"
    reference.train.precision = "fp16"
    reference.train.compile = False
    return reference


def as_run(recipe: Recipe) -> Recipe:
    """The recipe with the settings of its path: the reference path's when model.impl is reference."""
    return reference_path(recipe) if recipe.model.impl == "reference" else recipe


def fused_adamw(recipe: Recipe) -> bool:
    """AdamW as one kernel over all tensors (on GPU) on the fast path; the published code's is not fused."""
    return recipe.model.impl != "reference"
