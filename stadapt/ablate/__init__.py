"""`stadapt ablate`: the paper's ablations (Tables 1, 5a-c, 7; Fig. 2a) as sweeps of one recipe.

axes.py     the five axes, their default values from the paper, and value → recipe overrides
runner.py   one `stadapt train` process per variant, one per GPU at a time, resumable
report.py   the rich table, ablate-<axis>.csv / .md and the plot ablate-<axis>.png
"""
