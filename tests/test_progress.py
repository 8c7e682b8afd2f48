"""The progress display: fits 80 and 120 columns with step, samples/s and ETA visible, moves every step (not only
at log intervals), plain lines when not on a terminal; and every run ends with a sample picture."""

from __future__ import annotations

import functools
import io
import re
import time

import pytest
from conftest import RECIPES, TINY, TINY_ENCODER
from rich.console import Console

import advinf
import advinf.trainer
from advinf.progress import ProgressReporter

RECORD = {"step": 30, "epoch": 2, "steps_averaged": 10, "loss_critic": 1.38629, "loss_generator": 0.693147,
          "critic_data": 0.5012, "critic_model": 0.4987, "samples_per_s": 1234.5, "time": 3.2}


def terminal(width: int) -> Console:
    return Console(width=width, file=io.StringIO(), force_terminal=True, color_system=None)


def shown(reporter: ProgressReporter, width: int) -> list[str]:
    """The display as a terminal of ``width`` columns shows it now."""
    console = Console(width=width, file=io.StringIO(), color_system=None)
    with console.capture() as cap:
        console.print(reporter._bar.get_renderable())
    return cap.get().rstrip("\n").split("\n")


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("total", [12_000, 1_000_000])
def test_the_display_fits_and_shows_step_rate_and_eta(width, total):
    reporter = ProgressReporter(total, "auto", batch_size=100, console=terminal(width))
    assert reporter.mode == "bar"  # a terminal
    try:
        for step in range(1, total // 2 + 1, total // 40):
            reporter.advance(step)
            time.sleep(0.011)
        reporter.advance(total // 2)
        reporter.update(total // 2, RECORD)
        lines = shown(reporter, width)
    finally:
        reporter.close()
    assert all(len(line) <= width for line in lines), lines
    first = lines[0]
    assert re.search(rf"step +{total // 2}/{total} ", first), first
    assert re.search(r" [\d,.]+[kM]? samples/s ", first), first
    assert re.search(r"ETA \d+:\d\d:\d\d$", first), first
    assert "━" in first  # the bar, in the width that is left
    metrics = " ".join(lines[1:])  # the metrics on their own line(s), never cut inside an item
    assert lines[1].startswith("epoch 2  loss_critic 1.386  loss_generator 0.6931")
    assert "critic_model 0.4987" in metrics and "samples_per_s" not in metrics


def test_the_display_moves_between_log_intervals():
    reporter = ProgressReporter(100, "bar", batch_size=10, console=terminal(80))
    try:
        reporter.advance(1)
        assert re.search(r"step +1/100 ", shown(reporter, 80)[0])
        time.sleep(0.12)
        reporter.advance(7)  # no metrics yet: the step counter alone moves it
        assert re.search(r"step +7/100 ", shown(reporter, 80)[0])
        assert len(shown(reporter, 80)) == 1  # no metrics line before the first log interval
    finally:
        reporter.close()


class Recording(ProgressReporter):
    advanced: list[int] = []
    updated: list[int] = []

    def advance(self, step: int) -> None:
        self.advanced.append(step)
        super().advance(step)

    def update(self, step: int, record: dict) -> None:
        self.updated.append(step)
        super().update(step, record)


def test_training_moves_the_display_every_step(tmp_path, monkeypatch):
    console = terminal(80)
    monkeypatch.setattr(advinf.trainer, "ProgressReporter", functools.partial(Recording, console=console))
    Recording.advanced, Recording.updated = [], []
    advinf.run_recipe(RECIPES / "ali_mixture25.toml", out=tmp_path / "run",
                      overrides=[*TINY, *TINY_ENCODER, "train.progress=bar"])
    assert Recording.advanced == list(range(1, 31)) and Recording.updated == [10, 20, 30]
    final = console.file.getvalue().rstrip().split("\n")  # what stays on the terminal when training ends
    assert any(re.search(r"step +30/30 .*samples/s .*ETA 0:00:00", line) for line in final)


def test_plain_lines_when_not_a_terminal(capsys):
    reporter = ProgressReporter(100, "auto", console=Console(file=io.StringIO(), width=80))
    assert reporter.mode == "lines"
    reporter.advance(5)
    reporter.update(10, RECORD)
    reporter.close()
    err = capsys.readouterr().err
    assert err == "step 10/100  epoch 2  loss_critic 1.386  loss_generator 0.6931  critic_data 0.5012  " \
                  "critic_model 0.4987  samples_per_s 1234\n"


@pytest.mark.parametrize(("overrides", "stop_after", "pictures"), [
    (["train.sample_every=20"], None, [0, 20, 30]),   # the end is not on the schedule: a picture there too
    (["train.sample_every=15"], None, [0, 15, 30]),
    (["train.sample_every=20"], 25, [0, 20, 25]),     # where a run stops early
    (["train.sample_every=0"], None, []),             # never means never
])
def test_every_run_ends_with_a_sample_picture(tmp_path, overrides, stop_after, pictures):
    out = tmp_path / "run"
    advinf.run_recipe(RECIPES / "ali_mixture25.toml", out=out, stop_after=stop_after,
                      overrides=[*TINY, *TINY_ENCODER, *overrides])
    assert sorted(int(p.stem.split("_")[1]) for p in (out / "samples").glob("*.png")) == pictures
