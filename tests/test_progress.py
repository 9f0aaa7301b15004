"""The training progress line: its ETA leaves out the compilation before the first window."""

from stadapt.engine import progress as progress_module
from stadapt.engine.progress import TrainProgress, format_duration


def fake_clock(monkeypatch, *readings: float) -> None:
    """time.monotonic gives `readings` in turn, then keeps the last one."""
    left = list(readings)
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: left.pop(0) if len(left) > 1 else left[0])


def test_eta_is_paced_from_the_first_logged_window(monkeypatch, capsys):
    fake_clock(monkeypatch, 0.0, 60.0, 61.0)  # start; step 10 after a 60 s compile; step 20 one second later
    bar = TrainProgress(total_steps=1010, start_step=0)
    stats = {"loss": 1.0, "top1": 0.5, "lr": 1e-3, "clips_per_s": 320.0}
    bar.advance(10, stats)
    bar.advance(20, stats)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("step 10/1010") and lines[0].endswith(f"ETA {format_duration(6000)}")
    # 10 steps in the second after the first window: 990 steps left take 99 s, not 3,000
    assert lines[1].startswith("step 20/1010") and lines[1].endswith("ETA 0:01:39")


def test_a_resumed_run_counts_from_where_it_resumed(monkeypatch, capsys):
    fake_clock(monkeypatch, 0.0, 10.0)
    bar = TrainProgress(total_steps=200, start_step=100)
    bar.advance(110, {"loss": 1.0, "top1": 0.5, "lr": 1e-3, "clips_per_s": 32.0})
    assert capsys.readouterr().out.strip().endswith("ETA 0:01:30")  # 1 s a step, 90 steps left
