"""Recipes through the command line: any mistake is one line on stderr and exit code 2,
nothing on stdout, nothing run. Value checks themselves are tested in test_recipe.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stadapt.cli import main

REPO = Path(__file__).resolve().parents[1]
EVIL = "model: !!python/object/apply:os.system ['touch pwned-by-yaml']\n"


def run_stadapt(*args: str, cwd: Path, script: bool = False) -> subprocess.CompletedProcess:
    """A real process: `python -m stadapt ...`, or the installed `stadapt` console script."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [str(Path(sys.executable).parent / "stadapt")] if script else [sys.executable, "-m", "stadapt"]
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_python_m_stadapt_bad_value_is_one_line_and_exit_2(tmp_path):
    done = run_stadapt("bench", "model", "--recipe", "demo", "--set", "train.lr=-1", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    demo = REPO / "stadapt/recipes/demo.yaml"
    assert done.stderr.strip().splitlines() == [f"error: {demo}: train.lr = -1.0 must be positive"]
    assert not (tmp_path / "benchmarks").exists()


def test_console_script_refuses_yaml_that_constructs_objects(tmp_path):
    (tmp_path / "evil.yaml").write_text(EVIL)
    done = run_stadapt("bench", "model", "--recipe", "evil.yaml", cwd=tmp_path, script=True)
    assert done.returncode == 2 and done.stdout == ""
    line, = done.stderr.strip().splitlines()
    assert line.startswith("error: evil.yaml:1: not valid YAML (could not determine a constructor")
    assert not (tmp_path / "pwned-by-yaml").exists()


CASES = {
    "unknown key": (["--set", "train.learning_rate=1e-3"], "unknown key 'train.learning_rate'"),
    "unknown section": (["--set", "optim.lr=1e-3"], "unknown key 'optim' (known: data, model, train)"),
    "wrong type": (["--set", "train.batch_size=big"], "train.batch_size must be an integer, got 'big'"),
    "section not a mapping": (["--set", "data=5"], "data must be a mapping, got 5"),
    "negative lr": (["--set", "train.lr=-5e-4"], "train.lr = -0.0005 must be positive"),
    "infinite lr": (["--set", "train.lr=.inf"], "train.lr must be a finite number"),
    "width 0": (["--set", "model.adapter.width=0"], "model.adapter.width = 0 must be positive"),
    "even kernel": (["--set", "model.adapter.kernel=[3,2,2]"], "must be three odd positive sizes"),
    "more views than frames": (["--set", "data.num_frames=2", "--set", "data.test_views.temporal=3"],
                               "data.test_views.temporal = 3 is more views than frames per clip (2)"),
    "no '='": (["--set", "train.lr"], "--set 'train.lr': expected key=value"),
    "yaml objects": (["--recipe", "evil.yaml"], "could not determine a constructor for the tag"),
    "yaml syntax": (["--recipe", "broken.yaml"], "broken.yaml:2: not valid YAML"),
    "key given twice": (["--recipe", "twice.yaml"],
                        "twice.yaml:3: not valid YAML (key 'lr' is given twice (first on line 2))"),
    "nested too deeply": (["--recipe", "deep.yaml"], "deep.yaml: not valid YAML (nested too deeply)"),
    "not a mapping": (["--recipe", "list.yaml"], "a recipe is a mapping with sections data, model, train"),
    "no such recipe": (["--recipe", "k400_vitz"], "recipe not found: k400_vitz (bundled: "),
}


@pytest.fixture
def recipe_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.yaml").write_text(EVIL)
    (tmp_path / "broken.yaml").write_text("train:\n\tlr: 1.0e-3\n")  # a tab cannot indent
    (tmp_path / "twice.yaml").write_text("train:\n  lr: 1.0e-3\n  lr: 1.0e-4\n")
    (tmp_path / "deep.yaml").write_text("data: " + "[" * 5000 + "]" * 5000 + "\n")
    (tmp_path / "list.yaml").write_text("- data\n- model\n")
    return tmp_path


@pytest.mark.parametrize("command", [["train"], ["bench", "model"], ["bench", "loader"]])
@pytest.mark.parametrize("case", CASES)
def test_recipe_mistakes_are_one_line_and_exit_2(recipe_files, capsys, command, case):
    args, message = CASES[case]
    if "--recipe" not in args:
        args = ["--recipe", "demo", *args]
    if command == ["train"]:  # `stadapt train RECIPE`: the recipe is an argument
        at = args.index("--recipe")
        args = [args[at + 1], *args[:at], *args[at + 2:], "--out", "run"]
    assert main([*command, *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and message in err, err
    assert not (recipe_files / "pwned-by-yaml").exists() and not (recipe_files / "benchmarks").exists()
    assert not (recipe_files / "run").exists() and not (recipe_files / "runs").exists()


def test_python_m_stadapt_train_bad_kernel_is_one_line_and_exit_2(tmp_path):
    done = run_stadapt("train", "demo", "--set", "model.adapter.kernel=[2,1,1]", "--out", "run", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    line, = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and "model.adapter.kernel = [2, 1, 1] must be three odd positive sizes" in line
    assert not (tmp_path / "run").exists()
