"""Adapter-only artifacts: the trainable tensors in safetensors, everything else in metadata.

Like a PEFT adapter, `adapter.safetensors` is small (7.4M values for the K400 ViT-B
recipe) and meaningless without its backbone, so its metadata names the backbone, the
pretrained tag (or the checkpoint file's SHA-256), the fully resolved recipe and the class
names. `load_model` rebuilds the backbone from that and loads the tensors on top of it.
safetensors holds no pickled code, so loading a file never runs anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from stadapt.errors import CheckpointError, first_line
from stadapt.fileio import atomic_path
from stadapt.model.build import build_model
from stadapt.model.video_vit import VideoClassifier
from stadapt.recipe import Recipe, recipe_from_dict

FORMAT = "stadapt-adapter/1"
ADAPTER_FILE = "adapter.safetensors"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors this method trains, by their names in the full model."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def save_adapter(model: VideoClassifier, path: str | Path, recipe: Optional[Recipe] = None,
                 class_names: Optional[dict[str, list[str]]] = None) -> Path:
    """Write the trainable tensors and what is needed to rebuild the model, atomically."""
    recipe = recipe if recipe is not None else getattr(model, "recipe", None)
    if recipe is None:
        raise ValueError("save_adapter needs the recipe the model was built from")
    names = class_names if class_names is not None else getattr(model, "class_names", None)
    metadata = {
        "format": FORMAT,
        "recipe": recipe.to_yaml(),
        "class_names": json.dumps(names or {}),
        "backbone_identity": json.dumps(model.backbone_identity),
    }
    tensors = {k: v.contiguous().cpu() for k, v in trainable_state(model).items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of an adapter file; a foreign or damaged file is one CheckpointError."""
    path = Path(path)
    if path.is_dir():
        path = path / ADAPTER_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no such adapter file")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(exc, 200)})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a stadapt adapter (format {metadata.get('format')!r})")
    return tensors, metadata


def load_model(source: str | Path, map_location: str | torch.device = "cpu") -> VideoClassifier:
    """Rebuild the model of a run directory (or adapter file) with its trained weights.

    The returned model carries `.recipe` and `.class_names` ({head: [names]}).
    """
    tensors, metadata = read_adapter(source)
    file = Path(source) / ADAPTER_FILE if Path(source).is_dir() else Path(source)
    recipe = recipe_from_dict(_parsed(metadata, "recipe", yaml.safe_load, file, dict),
                              source=f"{source} (recipe in metadata)")
    identity = _parsed(metadata, "backbone_identity", json.loads, file, dict, "{}")
    model = build_model(recipe)
    expected = identity.get("pretrained_sha256")
    if expected and model.backbone_identity.get("pretrained_sha256") != expected:
        raise CheckpointError(f"{source}: trained on backbone weights {recipe.model.pretrained} with SHA-256 "
                              f"{expected[:12]}…, but that file now hashes differently")
    load_trainable(model, tensors, str(file))
    model.recipe = recipe
    model.class_names = _parsed(metadata, "class_names", json.loads, file, dict, "{}")
    return model.to(map_location)


def _parsed(metadata: dict[str, str], key: str, parse, source: str | Path, kind: type,
            default: Optional[str] = None):
    """metadata[key] parsed (YAML without Python objects, or JSON); a damaged or missing entry
    is one CheckpointError, never a traceback."""
    text = metadata.get(key, default)
    if text is None:
        raise CheckpointError(f"{source}: its metadata lacks {key!r} (not written by stadapt, or edited)")
    try:
        value = parse(text)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{source}: its metadata {key!r} cannot be read ({first_line(exc, 200)})") from None
    if not isinstance(value, kind):
        raise CheckpointError(f"{source}: its metadata {key!r} is a {type(value).__name__}, not a {kind.__name__}")
    return value


def load_trainable(model: VideoClassifier, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy `tensors` onto exactly the model's trainable parameters (names and shapes must match)."""
    params = dict(model.named_parameters())
    expected = {k for k, p in params.items() if p.requires_grad}
    missing, unexpected = expected - set(tensors), set(tensors) - expected
    if missing or unexpected:
        raise CheckpointError(f"{source}: does not fit this model (missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]})")
    with torch.no_grad():
        for name, value in tensors.items():
            if params[name].shape != value.shape:
                raise CheckpointError(f"{source}: {name} has shape {tuple(value.shape)}, "
                                      f"the model expects {tuple(params[name].shape)}")
            params[name].copy_(value)


def init_from(model: VideoClassifier, source: str | Path) -> list[str]:
    """Start from another run's adapter (UCF-101/HMDB-51 from K400).

    Adapters must match; classifier heads whose class count differs are left freshly
    initialised. Returns what was done, in lines a user can read.
    """
    tensors, _ = read_adapter(source)
    params = dict(model.named_parameters())
    notes, loaded = [], []
    with torch.no_grad():
        for name, value in tensors.items():
            if name not in params:
                raise CheckpointError(f"{source}: {name} has no place in this model (different adapter layout?)")
            if params[name].shape != value.shape:
                if name.startswith("heads."):
                    notes.append(f"{name}: {tuple(value.shape)} in {source} vs {tuple(params[name].shape)} here; "
                                 "classifier re-initialised")
                    continue
                raise CheckpointError(f"{source}: {name} has shape {tuple(value.shape)}, "
                                      f"this model expects {tuple(params[name].shape)}")
            params[name].copy_(value)
            loaded.append(name)
    notes.insert(0, f"initialised {len(loaded)} tensors from {source}")
    return notes
