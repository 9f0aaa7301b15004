"""Typed recipe schema: YAML in, validated dataclasses out.

A recipe is three sections (data, model, train) of plain dataclasses. Every value a user
writes is checked here once, so the rest of the code can trust it; every mistake becomes
one `RecipeError` line that names the file and the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from stadapt.errors import RecipeError, first_line

RECIPES_DIR = Path(__file__).parent / "recipes"

Position = Literal["before_attn", "after_attn", "after_ffn"]
Method = Literal["st_adapter", "adapter", "linear_probe", "full", "partial", "temporal", "prompt", "attn_pool"]
Arch = Literal["sa", "sa_ta", "sa_ts"]
POSITIONS: tuple[str, ...] = typing.get_args(Position)
METHODS: tuple[str, ...] = typing.get_args(Method)
ARCHS: tuple[str, ...] = typing.get_args(Arch)
ADAPTER_METHODS = ("st_adapter", "adapter")  # the methods that insert adapters at model.adapter.positions
# The paper's (Table 1) architectures of each method, and why the others are not offered.
METHOD_ARCHS: dict[str, tuple[str, ...]] = {
    "full": ("sa", "sa_ta", "sa_ts"), "partial": ("sa", "sa_ta"), "temporal": ("sa_ta",),
    "linear_probe": ("sa",), "attn_pool": ("sa",), "prompt": ("sa",), "adapter": ("sa",), "st_adapter": ("sa",),
}
ARCH_CONFLICTS = {
    "temporal": "temporal fine-tuning trains the temporal attention, which only sa_ta has",
    "sa_ts": "the temporal shift changes the frozen backbone's function, so only full fine-tuning can follow it",
    "sa_ta": "the new temporal attention must train, which this method does not do (use full, partial or temporal)",
}
SWIN_METHODS = ("st_adapter", "adapter", "linear_probe", "full")
FULL_BACKBONE_LR_SCALE = 0.01  # full fine-tuning of pretrained layers: 1/100 lr and wd (paper, appendix)


@dataclass
class TestViews:
    temporal: int = 1
    spatial: int = 1


@dataclass
class DataConfig:
    dataset: Literal["k400", "ssv2", "ek100", "ucf101", "hmdb51", "folder", "csv", "synthetic"] = "k400"
    root: str = "data/k400"  # a prepared directory: classes.txt, train.csv, val.csv, report.json
    source: Literal["raw", "prepared"] = "raw"  # original videos, or the store of `prepare --decode`
    num_frames: int = 8
    sampling: Literal["dense", "uniform"] = "dense"
    stride: int = 16
    train_resize: Literal["short_side_jitter", "random_resized_crop"] = "short_side_jitter"
    scale: list[int] = field(default_factory=lambda: [224, 256])  # short-side range (jitter)
    rrc_area: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop area range
    crop: int = 224
    test_resize: int = 224  # short side before the test crops
    mirror: bool = True
    randaugment: Optional[str] = None  # e.g. "rand-m7-n4-mstd0.5-inc1"
    test_views: TestViews = field(default_factory=TestViews)
    max_bad_fraction: float = 0.05  # stop training when more of the data set than this is unreadable
    train_fraction: float = 1.0  # train on this share of each class of the train split (seeded by train.seed)


@dataclass
class AdapterConfig:
    width: int = 384
    kernel: list[int] = field(default_factory=lambda: [3, 1, 1])
    positions: list[Position] = field(default_factory=lambda: ["before_attn"])
    layers: Union[Literal["all"], list[int]] = "all"
    activation: Literal["none", "gelu", "quick_gelu"] = "none"
    width_fraction: float = 0.5  # hierarchical backbones (Swin): the width as a fraction of each stage's width


@dataclass
class ModelConfig:
    backbone: str = "ViT-B-16-quickgelu"  # an open_clip model name
    pretrained: str = "openai"  # an open_clip tag, a local checkpoint file, or "none"
    method: Method = "st_adapter"
    arch: Arch = "sa"  # sa (space only) | sa_ta (TimeSformer) | sa_ts (X-ViT), Table 1's architecture column
    impl: Literal["fast", "reference"] = "fast"
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    num_classes: Union[int, dict[str, int]] = 400  # several heads: {verb: 97, noun: 300}
    dropout: float = 0.5
    prompt_tokens: int = 95  # method=prompt (VPT-deep): learnable tokens at every block's input (1.18M on ViT-B)
    init_from: Optional[str] = None  # a run directory or adapter.safetensors to start from
    grad_checkpointing: bool = False


@dataclass
class TrainConfig:
    steps: int = 20000
    batch_size: int = 128  # global batch; accumulate when a device holds less
    device_batch_size: Optional[int] = None  # per-device micro-batch; None = batch_size / world size
    lr: float = 5.0e-4
    weight_decay: float = 1.0e-2
    warmup_steps: int = 1000
    # lr and wd factor for trained pretrained weights; null: the paper's (full 0.01, partial 1.0)
    backbone_lr_scale: Optional[float] = None
    adapter_lr_scale: float = 1.0  # lr and wd factor for adapters (UCF/HMDB from K400: 0.1)
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"  # on GPU; the CPU always runs fp32
    compile: bool = True  # torch.compile the model on CUDA (ignored on CPU)
    workers: int = 8
    seed: int = 0
    eval_every: int = 2000
    save_every: int = 1000
    log_every: int = 10
    max_bad_steps: int = 5  # stop after this many non-finite losses in a row
    tensorboard: bool = False  # also write metrics.jsonl's lines as TensorBoard events in RUN/tensorboard


@dataclass
class Recipe:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------------------
# Loading


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A file path, or the name of a bundled recipe (`k400_vitb`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = RECIPES_DIR / f"{path.stem}.yaml"
    if path.suffix in ("", ".yaml") and not path.parent.parts and bundled.is_file():
        return bundled
    raise RecipeError(f"recipe not found: {name_or_path} (bundled: {', '.join(bundled_recipes())})")


def bundled_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(path: str | Path, overrides: typing.Iterable[str] = ()) -> Recipe:
    """Read a recipe file, apply `key=value` overrides, validate, return a `Recipe`."""
    path = resolve_recipe_path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_RecipeLoader) or {}
    except RecursionError:
        raise RecipeError(f"{path}: not valid YAML (nested too deeply)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or first_line(exc)
        raise RecipeError(f"{path}{where}: not valid YAML ({problem})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read recipe ({exc})") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with sections data, model, train")
    for item in overrides:
        apply_override(raw, item)
    return recipe_from_dict(raw, source=str(path))


class _RecipeLoader(yaml.SafeLoader):
    """safe_load (plain data only, no Python objects) that also refuses a key given twice in
    one mapping, where PyYAML would silently keep the last value."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line)
            except TypeError:  # an unhashable key: the base class says so
                break
            if first != key_node.start_mark.line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first on line {first + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def apply_override(raw: dict, item: str) -> None:
    """`a.b.c=value`: the value is parsed as YAML (`3`, `1e-4`, `[3,1,1]`, `none`)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {item!r}: expected key=value, e.g. train.lr=1e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except (yaml.YAMLError, RecursionError):
        value = text
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def recipe_from_dict(raw: dict, source: str = "recipe") -> Recipe:
    recipe = _build(Recipe, raw, prefix="", source=source)
    validate(recipe, source)
    if recipe.train.backbone_lr_scale is None:  # the paper's per-method setting, written into recipe.yaml
        recipe.train.backbone_lr_scale = FULL_BACKBONE_LR_SCALE if recipe.model.method == "full" else 1.0
    return recipe


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: {prefix.rstrip('.') or 'recipe'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known: {', '.join(names)})"
            raise RecipeError(f"{source}: unknown key '{prefix}{key}'{hint}")
    kwargs = {}
    for name in names:
        if name in raw:
            kwargs[name] = _coerce(hints[name], raw[name], f"{prefix}{name}", source)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where it is lossless."""
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, prefix=key + ".", source=source)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, source)
            except RecipeError as exc:
                errors.append(exc)
        raise errors[-1] if len(errors) == 1 else RecipeError(
            f"{source}: {key} = {value!r} is not one of the accepted forms ({_describe(tp)})")
    if origin is Literal:
        if value not in args:
            raise RecipeError(f"{source}: {key} = {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{source}: {key} must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{source}: {key} must be a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"{source}: {key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise RecipeError(f"{source}: {key} must be an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads 5e-4 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise RecipeError(f"{source}: {key} must be a number, got {value!r}")
        if not math.isfinite(number):
            raise RecipeError(f"{source}: {key} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise RecipeError(f"{source}: {key} must be a string, got {value!r}")
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


def _describe(tp: Any) -> str:
    return " or ".join("null" if a is type(None) else getattr(a, "__name__", str(a)) for a in typing.get_args(tp))


def validate(recipe: Recipe, source: str = "recipe") -> None:
    """Range and consistency checks that types alone cannot express."""

    def fail(key: str, value: Any, why: str) -> None:
        raise RecipeError(f"{source}: {key} = {value!r} {why}")

    d, m, t = recipe.data, recipe.model, recipe.train
    positive = {
        "data.num_frames": d.num_frames, "data.stride": d.stride, "data.crop": d.crop,
        "data.test_resize": d.test_resize, "data.test_views.temporal": d.test_views.temporal,
        "data.test_views.spatial": d.test_views.spatial, "model.adapter.width": m.adapter.width,
        "train.steps": t.steps, "train.batch_size": t.batch_size, "train.eval_every": t.eval_every,
        "train.save_every": t.save_every, "train.log_every": t.log_every,
        "train.max_bad_steps": t.max_bad_steps, "model.prompt_tokens": m.prompt_tokens,
    }
    for key, value in positive.items():
        if value <= 0:
            fail(key, value, "must be positive")
    if t.device_batch_size is not None and t.device_batch_size <= 0:
        fail("train.device_batch_size", t.device_batch_size, "must be positive")
    for key, value in {"train.lr": t.lr, "train.backbone_lr_scale": t.backbone_lr_scale,
                       "train.adapter_lr_scale": t.adapter_lr_scale}.items():
        if value is not None and not value > 0:
            fail(key, value, "must be positive")
    for key, value in {"train.weight_decay": t.weight_decay, "train.warmup_steps": t.warmup_steps,
                       "train.workers": t.workers, "train.seed": t.seed}.items():
        if value < 0:
            fail(key, value, "must not be negative")
    if not 0.0 <= m.dropout < 1.0:
        fail("model.dropout", m.dropout, "must be in [0, 1)")
    if not 0.0 < d.train_fraction <= 1.0:
        fail("data.train_fraction", d.train_fraction, "must be in (0, 1]")
    if not 0.0 <= d.max_bad_fraction <= 1.0:
        fail("data.max_bad_fraction", d.max_bad_fraction, "must be in [0, 1]")
    if len(d.scale) != 2 or not 0 < d.scale[0] <= d.scale[1]:
        fail("data.scale", d.scale, "must be [min, max] short-side lengths with 0 < min <= max")
    if d.train_resize == "short_side_jitter" and d.scale[0] < d.crop:
        fail("data.scale", d.scale, f"must not go below data.crop ({d.crop})")
    if len(d.rrc_area) != 2 or not 0 < d.rrc_area[0] <= d.rrc_area[1] <= 1:
        fail("data.rrc_area", d.rrc_area, "must be [min, max] with 0 < min <= max <= 1")
    if d.test_views.temporal > d.num_frames:
        fail("data.test_views.temporal", d.test_views.temporal, f"is more views than frames per clip ({d.num_frames})")
    if d.test_views.spatial not in (1, 3):
        fail("data.test_views.spatial", d.test_views.spatial, "must be 1 (centre crop) or 3 (three crops)")
    if d.randaugment is not None and not d.randaugment.startswith("rand-"):
        fail("data.randaugment", d.randaugment, "must look like rand-m7-n4-mstd0.5-inc1")
    if is_swin(m.backbone) and m.arch != "sa":
        fail("model.arch", m.arch, f"is not defined for {m.backbone}: temporal attention and temporal shift are "
             "those of plain ViTs (TimeSformer, X-ViT); Swin takes arch sa")
    if is_swin(m.backbone) and m.method not in SWIN_METHODS:
        fail("model.method", m.method, f"is not built for {m.backbone} (one of {', '.join(SWIN_METHODS)})")
    if is_swin(m.backbone) and (m.adapter.positions != ["before_attn"] or m.adapter.layers != "all"):
        fail("model.adapter", f"positions {m.adapter.positions}, layers {m.adapter.layers}",
             f"is not built for {m.backbone}: one adapter before each block's window attention (before_attn, all)")
    if not 0 < m.adapter.width_fraction <= 4:
        fail("model.adapter.width_fraction", m.adapter.width_fraction, "must be in (0, 4]")
    if m.arch not in METHOD_ARCHS[m.method]:
        why = ARCH_CONFLICTS["temporal" if m.method == "temporal" else m.arch]
        raise RecipeError(f"{source}: model.method = {m.method} with model.arch = {m.arch} is not one of the "
                          f"paper's pairs: {why} ({m.method} takes arch {', '.join(METHOD_ARCHS[m.method])})")
    k = m.adapter.kernel
    if len(k) != 3 or any(v <= 0 or v % 2 == 0 for v in k):
        fail("model.adapter.kernel", k, "must be three odd positive sizes [kT, kH, kW] ('same' padding)")
    if not m.adapter.positions:
        fail("model.adapter.positions", m.adapter.positions, "must name at least one position")
    if len(set(m.adapter.positions)) != len(m.adapter.positions):
        fail("model.adapter.positions", m.adapter.positions, "names a position twice")
    if isinstance(m.adapter.layers, list):
        if not m.adapter.layers or any(i < 0 for i in m.adapter.layers):
            fail("model.adapter.layers", m.adapter.layers, "must be 'all' or a non-empty list of block indices")
    heads = m.num_classes if isinstance(m.num_classes, dict) else {"label": m.num_classes}
    for name, n in heads.items():
        if n < 2:
            fail(f"model.num_classes.{name}" if isinstance(m.num_classes, dict) else "model.num_classes",
                 n, "must be at least 2")
    if m.pretrained.lower() not in ("none", "") and _looks_like_path(m.pretrained):
        if not Path(m.pretrained).expanduser().is_file():
            fail("model.pretrained", m.pretrained, "is not a file (give an open_clip tag, a checkpoint file or none)")


def is_swin(backbone: str) -> bool:
    """A timm Swin Transformer: hierarchical stages instead of a plain ViT's one grid of tokens."""
    return backbone.startswith("timm:swin")


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or Path(value).suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def head_sizes(model: ModelConfig) -> dict[str, int]:
    """Classifier heads by name; a single head is called `label` (the manifest column)."""
    return dict(model.num_classes) if isinstance(model.num_classes, dict) else {"label": model.num_classes}


def recipe_differences(saved: dict[str, Any], wanted: dict[str, Any],
                       allowed: typing.Collection[str] = ()) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, wanted value) wherever two recipe dicts differ, in key order,
    leaving out the `allowed` keys: whether a run on disk trains what is asked now."""
    found = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += [(f"{key}.{k}", va, vb) for k, va, vb in recipe_differences(a, b)]
        elif a != b:
            found.append((key, a, b))
    return [d for d in found if d[0] not in allowed]
