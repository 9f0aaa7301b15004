"""The five ablation axes of the paper and how each value becomes recipe overrides.

A variant is a name (also its run directory) and the `--set` overrides that make it. The
defaults are the paper's: Table 5a (width), 5b (layers), 5c (position), Table 7 (kernel)
and Table 1's eleven rows (method, `+arch` where not space-only, e.g. `full+sa_ta`).
Layer ranges in the paper are 1-based over the 12 blocks of ViT-B/16;
on a backbone of another depth the defaults are scaled to the same fractions of its depth,
while ranges a user gives with `--values` are taken as written, over the backbone's blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from stadapt.errors import StadaptError
from stadapt.recipe import ADAPTER_METHODS, ARCHS, METHOD_ARCHS, METHODS, POSITIONS, Recipe

PAPER_DEPTH = 12  # ViT-B/16, the backbone of Tables 5 and 7
# Table 1's rows, top to bottom: METHOD for the space-only architecture, METHOD+ARCH otherwise.
TABLE1_ROWS = ("full", "full+sa_ta", "full+sa_ts", "partial", "partial+sa_ta", "temporal+sa_ta", "prompt",
               "attn_pool", "linear_probe", "adapter", "st_adapter")


class AblationError(StadaptError):
    """An ablation that cannot be set up: a bad axis value or a recipe that does not fit it."""


@dataclass(frozen=True)
class Variant:
    name: str  # shown in tables and used as the run directory's name
    overrides: tuple[str, ...]  # `--set` items, applied after the user's


@dataclass(frozen=True)
class Axis:
    name: str
    title: str  # what varies, for table and plot titles
    paper: str  # where the paper reports it
    defaults: tuple[str, ...]
    example: str  # a valid --values, for error messages
    needs: tuple[str, ...]  # the recipe methods the axis makes sense for (empty: any)
    by_params: bool  # plot accuracy against trainable parameters (else bars)


AXES: dict[str, Axis] = {a.name: a for a in (
    Axis("width", "adapter bottleneck width", "Table 5a, Fig. 2a", ("64", "128", "256", "384", "768"),
         "64,384", ADAPTER_METHODS, by_params=True),
    Axis("layers", "blocks with adapters", "Table 5b", ("1-4", "5-8", "9-12", "5-12", "1-12"),
         "1-4,9-12", ADAPTER_METHODS, by_params=False),
    Axis("position", "adapter position in a block", "Table 5c",
         ("before_attn", "after_attn", "after_ffn", "before_attn+after_attn"),
         "before_attn,after_ffn", ADAPTER_METHODS, by_params=False),
    Axis("kernel", "depth-wise convolution kernel (T×H×W)", "Table 7", ("1x1x1", "1x3x3", "3x1x1", "3x3x3"),
         "1x1x1,3x1x1", ("st_adapter",), by_params=False),
    Axis("method", "fine-tuning method and architecture", "Table 1, Fig. 2a", TABLE1_ROWS,
         "linear_probe,full+sa_ta", (), by_params=True),
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


def width_variant(text: str, depth: int) -> Variant:
    if not text.isdigit() or int(text) <= 0:
        raise ValueError("a width is a positive integer")
    return Variant(str(int(text)), (f"model.adapter.width={int(text)}",))


def layers_variant(text: str, depth: int) -> Variant:
    first, last = parse_block_range(text)
    if last > depth:
        raise ValueError(f"the backbone has blocks 1-{depth}")
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


def position_variant(text: str, depth: int) -> Variant:
    positions = text.split("+")
    unknown = [p for p in positions if p not in POSITIONS]
    if unknown or len(set(positions)) != len(positions):
        raise ValueError(f"a position is one of {', '.join(POSITIONS)}, or several joined by +, each once")
    return Variant(text, (f"model.adapter.positions=[{','.join(positions)}]",))


def kernel_variant(text: str, depth: int) -> Variant:
    sizes = text.lower().replace("×", "x").split("x")
    if len(sizes) != 3 or not all(s.isdigit() and int(s) % 2 == 1 for s in sizes):
        raise ValueError("a kernel is kTxkHxkW with odd sizes, e.g. 3x1x1")
    kernel = [int(s) for s in sizes]
    return Variant("x".join(map(str, kernel)), (f"model.adapter.kernel=[{','.join(map(str, kernel))}]",))


def method_variant(text: str) -> Variant:
    """`METHOD` or `METHOD+ARCH` (Table 1's rows, e.g. `full+sa_ta`) → its model.method and model.arch.

    ValueError (a reason a user can read) for an unknown name or a pair the paper does not have.
    """
    method, _, arch = text.partition("+")
    arch = arch or "sa"
    if method not in METHODS or arch not in ARCHS:
        raise ValueError(f"a method is one of {', '.join(METHODS)}, optionally +{'/+'.join(ARCHS[1:])}")
    if arch not in METHOD_ARCHS[method]:
        raise ValueError(f"{method} takes arch {', '.join(METHOD_ARCHS[method])}")
    name = method if arch == "sa" else f"{method}+{arch}"
    return Variant(name, (f"model.method={method}", f"model.arch={arch}"))


PARSERS: dict[str, Callable[[str, int], Variant]] = {
    "width": width_variant, "layers": layers_variant, "position": position_variant,
    "kernel": kernel_variant, "method": lambda text, depth: method_variant(text),
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


def variants(axis: Axis, values: Optional[str], depth: int) -> tuple[list[Variant], Optional[str]]:
    """The axis's variants (from `--values`, else the paper's defaults), and a note when defaults were scaled."""
    parse = PARSERS[axis.name]
    note = None
    if values is None:
        if axis.name == "layers" and depth != PAPER_DEPTH:
            ranges = [scale_block_range(*parse_block_range(v), depth) for v in axis.defaults]
            found = [layers_for(*r) for r in ranges]
            note = (f"the backbone has {depth} blocks, not {PAPER_DEPTH}: the paper's block ranges "
                    f"{', '.join(axis.defaults)} are scaled to {', '.join(v.name for v in found)}")
        else:
            found = [parse(v, depth) for v in axis.defaults]
        return _unique(found), note
    items = [v.strip() for v in values.split(",")]
    if not any(items):
        raise AblationError(f"--values is empty (e.g. --values {axis.example})")
    found = []
    for item in items:
        try:
            found.append(parse(item, depth))
        except ValueError as exc:
            raise AblationError(f"--values {values}: {item!r} is not a valid {axis.name} value ({exc})") from None
    names = [v.name for v in found]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise AblationError(f"--values {values}: {', '.join(repeated)} given twice")
    return found, note


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
