"""The ablation axes of the paper and how each value becomes recipe overrides.

A variant is a name (also its run directory) and the `--set` overrides that make it. The
defaults are the paper's: Table 5a (width), 5b (layers), 5c (position), Table 7 (kernel),
Table 1's eleven rows (method, `+arch` where not space-only, e.g. `full+sa_ta`), Fig. 2b
(steps), Fig. 2c (data), Tables 2/3 (frames) and Table 12 (split). With `--methods`, every
value is trained once per method (run directory METHOD/VALUE). Layer ranges in the paper are
1-based over the 12 blocks of ViT-B/16;
on a backbone of another depth the defaults are scaled to the same fractions of its depth,
while ranges a user gives with `--values` are taken as written, over the backbone's blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from stadapt.errors import StadaptError
from stadapt.recipe import ADAPTER_METHODS, ARCHS, METHOD_ARCHS, METHODS, POSITIONS, Recipe

PAPER_DEPTH = 12  # ViT-B/16, the backbone of Tables 5 and 7
# Table 1's rows, top to bottom: METHOD for the space-only architecture, METHOD+ARCH otherwise.
TABLE1_ROWS = ("full", "full+sa_ta", "full+sa_ts", "partial", "partial+sa_ta", "temporal+sa_ta", "prompt",
               "attn_pool", "linear_probe", "adapter", "st_adapter")
SPLITS = ("1", "2", "3")  # the official splits of UCF-101 and HMDB-51


class AblationError(StadaptError):
    """An ablation that cannot be set up: a bad axis value or a recipe that does not fit it."""


@dataclass(frozen=True)
class Variant:
    name: str  # the value, as shown in tables
    overrides: tuple[str, ...]  # `--set` items, applied after the user's
    method: Optional[str] = None  # with --methods: the method this variant trains

    @property
    def key(self) -> str:
        """The run directory, relative to the ablation's: VALUE, or METHOD/VALUE with --methods."""
        return self.name if self.method is None else f"{self.method}/{self.name}"


@dataclass(frozen=True)
class Base:
    """What a value's overrides may depend on: the recipe being ablated and its backbone's depth."""

    recipe: Recipe
    depth: int = PAPER_DEPTH


@dataclass(frozen=True)
class Axis:
    name: str
    title: str  # what varies, for table and plot titles
    paper: str  # where the paper reports it
    defaults: tuple[str, ...]
    example: str  # a valid --values, for error messages
    needs: tuple[str, ...]  # the recipe methods the axis makes sense for (empty: any)
    plot: str  # "params": accuracy against trainable parameters; "line": against the value; "bars"
    log_x: bool = False  # a line plot's x axis on a log scale


AXES: dict[str, Axis] = {a.name: a for a in (
    Axis("width", "adapter bottleneck width", "Table 5a, Fig. 2a", ("64", "128", "256", "384", "768"),
         "64,384", ADAPTER_METHODS, plot="params"),
    Axis("layers", "blocks with adapters", "Table 5b", ("1-4", "5-8", "9-12", "5-12", "1-12"),
         "1-4,9-12", ADAPTER_METHODS, plot="bars"),
    Axis("position", "adapter position in a block", "Table 5c",
         ("before_attn", "after_attn", "after_ffn", "before_attn+after_attn"),
         "before_attn,after_ffn", ADAPTER_METHODS, plot="bars"),
    Axis("kernel", "depth-wise convolution kernel (T×H×W)", "Table 7", ("1x1x1", "1x3x3", "3x1x1", "3x3x3"),
         "1x1x1,3x1x1", ("st_adapter",), plot="bars"),
    Axis("method", "fine-tuning method and architecture", "Table 1, Fig. 2a", TABLE1_ROWS,
         "linear_probe,full+sa_ta", (), plot="params"),
    Axis("steps", "training steps (fraction of the recipe's)", "Fig. 2b", ("0.25", "0.5", "0.75", "1"),
         "0.25,1", (), plot="line"),
    Axis("data", "share of the training split", "Fig. 2c", ("0.05", "0.1", "0.2", "0.5", "1"),
         "0.25,1", (), plot="line", log_x=True),
    Axis("frames", "frames per view", "Tables 2, 3", ("8", "16", "32"), "8,16", (), plot="line"),
    Axis("split", "official split", "Table 12", SPLITS, "1,2", (), plot="bars"),
)}


def get_axis(name: str) -> Axis:
    if name not in AXES:
        raise AblationError(f"unknown ablation axis {name!r} (one of {', '.join(AXES)})")
    return AXES[name]


def check_recipe(axis: Axis, recipe: Recipe) -> None:
    """Varying adapters is meaningless when the recipe's method has none (or, for kernels, no convolution)."""
    if axis.needs and recipe.model.method not in axis.needs:
        raise AblationError(f"ablate {axis.name} varies the {axis.title}, but the recipe's model.method is "
                            f"{recipe.model.method}: use --set model.method={axis.needs[0]}")


# ---------------------------------------------------------------------------------------
# One value → one variant


def width_variant(text: str, base: Base) -> Variant:
    if not text.isdigit() or int(text) <= 0:
        raise ValueError("a width is a positive integer")
    return Variant(str(int(text)), (f"model.adapter.width={int(text)}",))


def layers_variant(text: str, base: Base) -> Variant:
    first, last = parse_block_range(text)
    if last > base.depth:
        raise ValueError(f"the backbone has blocks 1-{base.depth}")
    return layers_for(first, last)


def layers_for(first: int, last: int) -> Variant:
    """1-based inclusive block range → the recipe's 0-based `model.adapter.layers`."""
    name = str(first) if first == last else f"{first}-{last}"
    return Variant(name, (f"model.adapter.layers=[{','.join(str(i - 1) for i in range(first, last + 1))}]",))


def parse_block_range(text: str) -> tuple[int, int]:
    first, sep, last = text.partition("-")
    last = last if sep else first
    if not (first.isdigit() and last.isdigit()) or not 1 <= int(first) <= int(last):
        raise ValueError("a block range is FIRST-LAST, 1-based, e.g. 5-8 (or one block, e.g. 12)")
    return int(first), int(last)


def position_variant(text: str, base: Base) -> Variant:
    positions = text.split("+")
    unknown = [p for p in positions if p not in POSITIONS]
    if unknown or len(set(positions)) != len(positions):
        raise ValueError(f"a position is one of {', '.join(POSITIONS)}, or several joined by +, each once")
    return Variant(text, (f"model.adapter.positions=[{','.join(positions)}]",))


def kernel_variant(text: str, base: Base) -> Variant:
    sizes = text.lower().replace("×", "x").split("x")
    if len(sizes) != 3 or not all(s.isdigit() and int(s) % 2 == 1 for s in sizes):
        raise ValueError("a kernel is kTxkHxkW with odd sizes, e.g. 3x1x1")
    kernel = [int(s) for s in sizes]
    return Variant("x".join(map(str, kernel)), (f"model.adapter.kernel=[{','.join(map(str, kernel))}]",))


def method_variant(text: str, base: Optional[Base] = None) -> Variant:
    """`METHOD` or `METHOD+ARCH` (Table 1's rows, e.g. `full+sa_ta`) → its model.method and model.arch.

    `--methods` parses each of its names with this too. ValueError (a reason a user can read) for
    an unknown name or a pair the paper does not have.
    """
    method, _, arch = text.partition("+")
    arch = arch or "sa"
    if method not in METHODS or arch not in ARCHS:
        raise ValueError(f"a method is one of {', '.join(METHODS)}, optionally +{'/+'.join(ARCHS[1:])}")
    if arch not in METHOD_ARCHS[method]:
        raise ValueError(f"{method} takes arch {', '.join(METHOD_ARCHS[method])}")
    name = method if arch == "sa" else f"{method}+{arch}"
    return Variant(name, (f"model.method={method}", f"model.arch={arch}"))


def parse_fraction(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:
        raise ValueError(f"{what} is a fraction in (0, 1], e.g. 0.25")
    return value


def steps_variant(text: str, base: Base) -> Variant:
    """A fraction of the recipe's steps; the warm-up shrinks by the same fraction (as in Fig. 2b)."""
    fraction = parse_fraction(text, "a training budget")
    train = base.recipe.train
    steps, warmup = max(1, round(fraction * train.steps)), round(fraction * train.warmup_steps)
    return Variant(f"{fraction:g}", (f"train.steps={steps}", f"train.warmup_steps={warmup}"))


def data_variant(text: str, base: Base) -> Variant:
    """A seeded, class-stratified share of the training split (`data.train_fraction`); val is unchanged."""
    fraction = parse_fraction(text, "a share of the training split")
    return Variant(f"{fraction:g}", (f"data.train_fraction={fraction:g}",))


def frames_variant(text: str, base: Base) -> Variant:
    """Frames per view; dense sampling keeps the recipe's temporal span, as Table 8's strides 16, 8, 4
    for 8, 16, 32 frames keep 128 frames; uniform sampling (SSv2) has one frame per segment anyway."""
    if not text.isdigit() or int(text) <= 0:
        raise ValueError("frames per view is a positive integer")
    frames = int(text)
    data = base.recipe.data
    overrides = [f"data.num_frames={frames}"]
    if data.sampling == "dense":
        overrides.append(f"data.stride={max(1, round(data.num_frames * data.stride / frames))}")
    return Variant(str(frames), tuple(overrides))


def split_variant(text: str, base: Base) -> Variant:
    """Official split N: the prepared directory DATA_ROOT/splitN that `stadapt prepare ... --split all` writes."""
    if text not in SPLITS:
        raise ValueError(f"a split is one of {', '.join(SPLITS)}")
    return Variant(text, (f"data.root={Path(base.recipe.data.root) / f'split{text}'}",))


PARSERS: dict[str, Callable[[str, Base], Variant]] = {
    "width": width_variant, "layers": layers_variant, "position": position_variant,
    "kernel": kernel_variant, "method": method_variant, "steps": steps_variant, "data": data_variant,
    "frames": frames_variant, "split": split_variant,
}


# ---------------------------------------------------------------------------------------
# The list of variants


def scale_block_range(first: int, last: int, depth: int, reference: int = PAPER_DEPTH) -> tuple[int, int]:
    """A 1-based range over `reference` blocks → the range covering the same fraction of `depth` blocks.

    The range's edges (as fractions of the depth) are rounded to the nearest block edge, so
    the paper's thirds stay disjoint and together cover every block; a range never shrinks
    to nothing. Over 4 blocks: 1-4 → 1, 5-8 → 2-3, 9-12 → 4, 5-12 → 2-4, 1-12 → 1-4.
    """
    start = min(int((first - 1) * depth / reference + 0.5), depth - 1)
    end = min(max(int(last * depth / reference + 0.5), start + 1), depth)
    return start + 1, end


def variants(axis: Axis, values: Optional[str], base: Base) -> tuple[list[Variant], Optional[str]]:
    """The axis's variants (from `--values`, else the paper's defaults), and a note when defaults were scaled."""
    parse = PARSERS[axis.name]
    note = None
    if values is None:
        if axis.name == "layers" and base.depth != PAPER_DEPTH:
            ranges = [scale_block_range(*parse_block_range(v), base.depth) for v in axis.defaults]
            found = [layers_for(*r) for r in ranges]
            note = (f"the backbone has {base.depth} blocks, not {PAPER_DEPTH}: the paper's block ranges "
                    f"{', '.join(axis.defaults)} are scaled to {', '.join(v.name for v in found)}")
        else:
            found = [parse(v, base) for v in axis.defaults]
        return _unique(found), note
    return parse_list("--values", values, axis.example, lambda item: parse(item, base), axis.name), note


def parse_list(option: str, text: str, example: str, parse: Callable[[str], Variant], what: str) -> list[Variant]:
    """A comma-separated option, each item parsed; an empty list or an item given twice is an error."""
    items = [v.strip() for v in text.split(",")]
    if not any(items):
        raise AblationError(f"{option} is empty (e.g. {option} {example})")
    found = []
    for item in items:
        try:
            found.append(parse(item))
        except ValueError as exc:
            raise AblationError(f"{option} {text}: {item!r} is not a valid {what} value ({exc})") from None
    names = [v.name for v in found]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise AblationError(f"{option} {text}: {', '.join(repeated)} given twice")
    return found


def methods_list(text: str) -> list[Variant]:
    """`--methods st_adapter,full`: each name through `method_variant`, the one place method names are parsed."""
    return parse_list("--methods", text, "st_adapter,full", method_variant, "method")


def crossed(methods: list[Variant], found: list[Variant]) -> list[Variant]:
    """Every value once per method, method-major: the method's overrides first, then the value's."""
    return [Variant(v.name, (*m.overrides, *v.overrides), method=m.name) for m in methods for v in found]


def _unique(found: list[Variant]) -> list[Variant]:
    """Scaled layer ranges can coincide on a shallow backbone: keep the first of each."""
    seen: dict[str, Variant] = {}
    for v in found:
        seen.setdefault(v.name, v)
    return list(seen.values())


def backbone_depth(recipe: Recipe) -> int:
    """Number of blocks of the recipe's backbone, of any library, from its shapes alone (no weights)."""
    from stadapt.model.build import build_model

    return len(build_model(recipe, device="meta").blocks)
