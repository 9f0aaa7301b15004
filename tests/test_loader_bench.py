import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEYS = {"clips_per_s", "clips_per_s_per_worker", "reference_clips_per_s_per_worker", "speedup_vs_reference",
        "device", "cpu", "versions", "date", "recipe", "num_frames", "crop", "source"}


def stadapt(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "stadapt", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_bench_loader_json(prepared_dir, tmp_path):
    done = stadapt("bench", "loader", "--recipe", "demo", "--set", f"data.root={prepared_dir}", "--workers", "1",
                   "--clips", "8", "--batch-size", "4", "--rounds", "1", "--reference-clips", "2", "--json",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # exactly one JSON object, nothing else
    assert KEYS <= set(result)
    assert result["clips_per_s"] > 0 and result["source"] == "prepared" and result["num_frames"] == 8
    assert {"torch", "decord", "av"} <= set(result["versions"])
    assert result["store_gb_per_hour"] > 0 and 30 < result["store_psnr_db"] < 70
    assert result["store_encoding"]["jpeg_quality"] == 85
    saved = list((tmp_path / "benchmarks" / "results").glob("loader-demo-*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text()) == result


def test_bench_loader_table_shows_the_store(prepared_dir, tmp_path):
    done = stadapt("bench", "loader", "--recipe", "demo", "--set", f"data.root={prepared_dir}", "--workers", "0",
                   "--clips", "4", "--batch-size", "4", "--rounds", "1", "--reference-clips", "1",
                   "--out", str(tmp_path / "loader.json"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "loader.json").read_text())
    assert re.search(rf"store_gb_per_hour\s+│\s+{result['store_gb_per_hour']}\s", done.stdout)
    assert "store_encoding" in done.stdout and "jpeg_quality 85" in done.stdout


def test_bench_loader_bad_data_root_is_one_line(tmp_path, capsys):
    from stadapt.cli import main

    code = main(["bench", "loader", "--recipe", "demo", "--set", f"data.root={tmp_path / 'nope'}", "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert "data.root" in err and len(err.strip().splitlines()) == 1
