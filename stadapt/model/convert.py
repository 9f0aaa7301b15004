"""Import checkpoints written by the public ST-Adapter code into a stadapt run directory.

The public code saves `{'model': trainable state dict, 'optimizer': ..., ...}` with keys such
as `transformer.resblocks.3.adapter_pre_attn.fc1.weight` (possibly under a `module.` or
`backbone.` prefix) and a classifier `fc`. Its adapters are ours with no activation:
`adapter_pre_attn` sits before attention and `adapter_pre_mlp` before the MLP (our
`after_attn`). The tensors decide the adapter layout; the recipe decides everything else
(backbone, pretrained weights, data), so the run loads with `stadapt.load_model`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from stadapt.errors import CheckpointError
from stadapt.fileio import atomic_write_text
from stadapt.model.artifact import ADAPTER_FILE, load_trainable, save_adapter
from stadapt.model.build import build_model
from stadapt.recipe import Recipe, load_recipe, recipe_from_dict
from stadapt.torchload import load_weights_only

PUBLIC_POSITIONS = {"adapter_pre_attn": "before_attn", "adapter_pre_mlp": "after_attn"}
ADAPTER_TENSORS = ("fc1.weight", "fc1.bias", "conv.weight", "conv.bias", "fc2.weight", "fc2.bias")
_ADAPTER_KEY = re.compile(r"^(?P<prefix>.*?)transformer\.resblocks\.(?P<block>\d+)\."
                          r"(?P<position>adapter_pre_attn|adapter_pre_mlp)\.(?P<tensor>(?:fc1|conv|fc2)\.(?:weight|bias))$")
_HEAD_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?)fc\.(?P<tensor>weight|bias)$")


@dataclass
class OfficialCheckpoint:
    """The adapter and classifier tensors of a public-code checkpoint, by our positions."""

    adapters: dict[tuple[int, str], dict[str, torch.Tensor]]  # (block, position) → {"fc1.weight": ...}
    head: dict[str, torch.Tensor]  # {"weight": C×d, "bias": C}
    ignored: list[str] = field(default_factory=list)  # keys that are neither adapters nor the classifier

    @property
    def positions(self) -> list[str]:
        present = {pos for _, pos in self.adapters}
        return [pos for pos in PUBLIC_POSITIONS.values() if pos in present]

    @property
    def layers(self) -> list[int]:
        return sorted({block for block, _ in self.adapters})

    @property
    def width(self) -> int:
        return int(next(iter(self.adapters.values()))["fc1.weight"].shape[0])

    @property
    def dim(self) -> int:
        """Token width of the backbone the adapters were trained in."""
        return int(next(iter(self.adapters.values()))["fc1.weight"].shape[1])

    @property
    def kernel(self) -> list[int]:
        return [int(k) for k in next(iter(self.adapters.values()))["conv.weight"].shape[2:]]

    @property
    def num_classes(self) -> int:
        return int(self.head["weight"].shape[0])


@dataclass
class Conversion:
    """What `convert_official` wrote, for the summary a user reads."""

    out: Path
    recipe: Recipe
    checkpoint: OfficialCheckpoint
    class_source: str
    tensors: int


def read_official_checkpoint(path: str | Path) -> OfficialCheckpoint:
    """Load a public-code checkpoint without running pickled code and check its layout."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    raw = load_weights_only(path, "PyTorch checkpoint")
    state = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not an ST-Adapter checkpoint (no 'model' state dict)")
    return _split_state(state, str(path))


def _split_state(state: dict, source: str) -> OfficialCheckpoint:
    adapters: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    heads: dict[str, dict[str, torch.Tensor]] = {}
    prefixes, ignored = set(), []
    for key, value in state.items():
        key = str(key)
        if not isinstance(value, torch.Tensor):
            ignored.append(key)
            continue
        if match := _ADAPTER_KEY.match(key):
            prefixes.add(match["prefix"])
            slot = (int(match["block"]), PUBLIC_POSITIONS[match["position"]])
            adapters.setdefault(slot, {})[match["tensor"]] = value
        elif match := _HEAD_KEY.match(key):
            heads.setdefault(match["prefix"], {})[match["tensor"]] = value
        else:
            ignored.append(key)
    if not adapters:
        raise CheckpointError(f"{source}: not an ST-Adapter checkpoint "
                              "(no transformer.resblocks.N.adapter_pre_* tensors)")
    if len(prefixes) > 1:
        raise CheckpointError(f"{source}: adapter keys under several prefixes ({', '.join(sorted(prefixes))})")
    complete = {p: h for p, h in heads.items() if set(h) == {"weight", "bias"}}
    if len(complete) != 1:
        found = ", ".join(f"{p}fc" for p in sorted(heads)) or "none"
        raise CheckpointError(f"{source}: expected one classifier fc.weight/fc.bias, found {found}")
    checkpoint = OfficialCheckpoint(adapters=adapters, head=next(iter(complete.values())), ignored=ignored)
    _check_layout(checkpoint, source)
    return checkpoint


def _check_layout(checkpoint: OfficialCheckpoint, source: str) -> None:
    """Every adapter complete and alike; the same positions in every adapted block."""
    for (block, position), tensors in sorted(checkpoint.adapters.items()):
        missing = [t for t in ADAPTER_TENSORS if t not in tensors]
        if missing:
            raise CheckpointError(f"{source}: the {position} adapter of block {block} lacks {', '.join(missing)}")
    width, kernel = checkpoint.width, checkpoint.kernel
    for (block, position), tensors in sorted(checkpoint.adapters.items()):
        conv = tensors["conv.weight"]
        if conv.dim() != 5 or conv.shape[:2] != (width, 1):
            raise CheckpointError(f"{source}: block {block} {position}: conv.weight {tuple(conv.shape)} is not a "
                                  f"depth-wise 3D convolution of width {width}")
        if tensors["fc1.weight"].shape[0] != width or list(conv.shape[2:]) != kernel:
            raise CheckpointError(f"{source}: adapters of different widths or kernels (block {block} {position}); "
                                  "stadapt gives all adapters one shape")
    for block in checkpoint.layers:
        here = [pos for pos in checkpoint.positions if (block, pos) in checkpoint.adapters]
        if here != checkpoint.positions:
            raise CheckpointError(f"{source}: block {block} has adapters at {here}, other blocks at "
                                  f"{checkpoint.positions}; stadapt uses the same positions in every adapted block")
    if checkpoint.head["weight"].dim() != 2:
        raise CheckpointError(f"{source}: fc.weight has shape {tuple(checkpoint.head['weight'].shape)}, expected C×d")


def convert_official(checkpoint_path: str | Path, recipe_path: str | Path, out: str | Path,
                     overrides: Iterable[str] = ()) -> Conversion:
    """Write `out/recipe.yaml` and `out/adapter.safetensors` from a public-code checkpoint."""
    out = Path(out)
    if (out / ADAPTER_FILE).exists():
        raise CheckpointError(f"{out}: already holds {ADAPTER_FILE}; choose a new --out")
    checkpoint = read_official_checkpoint(checkpoint_path)
    recipe = adapted_recipe(load_recipe(recipe_path, overrides), checkpoint)
    model = build_model(recipe)
    if checkpoint.dim != model.dim or checkpoint.head["weight"].shape[1] != model.dim:
        raise CheckpointError(f"{checkpoint_path}: adapters of token width {checkpoint.dim}, "
                              f"but {recipe.model.backbone} has width {model.dim}; "
                              "give the recipe of the backbone it was trained with")
    if checkpoint.layers == list(range(len(model.blocks))):
        recipe.model.adapter.layers = "all"  # the same model, written the way recipes say it
    tensors = stadapt_tensors(checkpoint)
    load_trainable(model, tensors, str(checkpoint_path))
    names, class_source = class_names(recipe, checkpoint.num_classes)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "recipe.yaml", recipe.to_yaml())
    save_adapter(model, out / ADAPTER_FILE, recipe=recipe, class_names={"label": names})
    return Conversion(out=out, recipe=recipe, checkpoint=checkpoint, class_source=class_source, tensors=len(tensors))


def adapted_recipe(recipe: Recipe, checkpoint: OfficialCheckpoint) -> Recipe:
    """The recipe with the checkpoint's adapter layout and classifier size, validated again."""
    raw = recipe.to_dict()
    raw["model"].update(method="st_adapter", num_classes=checkpoint.num_classes)
    raw["model"]["adapter"] = {"width": checkpoint.width, "kernel": checkpoint.kernel,
                               "positions": checkpoint.positions, "layers": checkpoint.layers,
                               "activation": "none"}
    return recipe_from_dict(raw, source="recipe with the checkpoint's adapter layout")


def stadapt_tensors(checkpoint: OfficialCheckpoint) -> dict[str, torch.Tensor]:
    """Rename the public-code tensors to this model's parameter names."""
    tensors = {f"visual.transformer.resblocks.{block}.adapters.{position}.{name}": value
               for (block, position), adapter in checkpoint.adapters.items() for name, value in adapter.items()}
    tensors.update({f"heads.label.{name}": value for name, value in checkpoint.head.items()})
    return tensors


def class_names(recipe: Recipe, num_classes: int) -> tuple[list[str], str]:
    """Names from the recipe's prepared data (`classes.txt`) when it is there, else class_i."""
    path = Path(recipe.data.root) / "classes.txt"
    if not path.is_file():
        return [f"class_{i}" for i in range(num_classes)], "class_0..class_N-1 (no classes.txt)"
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != num_classes:
        raise CheckpointError(f"{path} names {len(names)} classes, the checkpoint's classifier has {num_classes}")
    return names, str(path)
