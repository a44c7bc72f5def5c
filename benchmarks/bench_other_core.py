"""What work on the other core costs the classification loop on this machine (issue 22's load figures).

Runs a plain `edge-classify --camera VIDEO --loop --json -o LOG` (no web server) and alternates slices with
the other core idle and slices beside a second process that burns `--duty` of a core in short bursts (by
default 18%, about what the live view's server and the load benchmark's clients take under the full load).
Each burning slice is compared with the idle slices on either side, so the machine's drift cancels. The
classification rate is the -o log's growth. Loopback only; every loop is bounded.

    .venv/bin/python benchmarks/bench_other_core.py [--model artifacts/model_int8.tflite] [--duty 0.18]
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from bench_live_view import DEFAULT_DATA, DEFAULT_MODEL, PICTURE_STRIDE, VIDEO_FPS, VIDEO_FRAMES, steal_seconds
from screenshot_live_view import write_camera_video

DEFAULT_DUTY = 0.18
DEFAULT_PAIRS = 6
DEFAULT_SLICE_S = 10.0
BURST_PERIOD_S = 0.01
WARMUP_S = 6.0
SETTLE_S = 0.5
STOP_TIMEOUT_S = 10.0
BURNER = """
import time
busy, period = {busy!r}, {period!r}
while True:
    begun = time.perf_counter()
    while time.perf_counter() - begun < busy:
        pass
    time.sleep(period - busy)
"""


def log_lines(path: Path) -> int:
    with open(path, "rb") as log:
        return sum(1 for _ in log)


@click.command()
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_MODEL, show_default=True)
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATA, show_default=True,
              help="CIFAR-10 JPEG tree for the video's pictures (synthetic pictures without it).")
@click.option("--duty", type=click.FloatRange(min=0.01, max=0.99), default=DEFAULT_DUTY, show_default=True,
              help="Share of a core the burner takes.")
@click.option("--pairs", type=click.IntRange(min=1, max=30), default=DEFAULT_PAIRS, show_default=True)
@click.option("--slice", "slice_s", type=click.FloatRange(min=1), default=DEFAULT_SLICE_S, show_default=True)
def main(model: Path, data: Path, duty: float, pairs: int, slice_s: float) -> None:
    """Classification fps with the other core idle and beside a duty-cycle burner, alternating."""
    if not model.is_file():
        raise click.ClickException(f"no model at {model}: make one with `make train convert`, or pass --model")
    pictures = sorted(data.glob("test/*/*.jpg"))[::PICTURE_STRIDE][:VIDEO_FRAMES] if data.is_dir() else []
    program = Path(sys.executable).with_name("edge-classify")
    burner = BURNER.format(busy=duty * BURST_PERIOD_S, period=BURST_PERIOD_S)
    rates: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-other-core-") as work:
        video, log = Path(work) / "camera.avi", Path(work) / "results.jsonl"
        click.echo(f"camera: {write_camera_video(video, pictures, VIDEO_FRAMES, VIDEO_FPS)}")
        classify = subprocess.Popen([str(program), "-m", str(model), "--camera", str(video), "--loop", "--json",
                                     "-o", str(log)], stderr=subprocess.DEVNULL)
        try:
            time.sleep(WARMUP_S)
            for number in range(2 * pairs + 1):
                burning = number % 2 == 1
                other = subprocess.Popen([sys.executable, "-c", burner]) if burning else None
                try:
                    time.sleep(SETTLE_S)
                    lines, begun, steal = log_lines(log), time.monotonic(), steal_seconds()
                    time.sleep(slice_s)
                    seconds = time.monotonic() - begun
                    rates.append((log_lines(log) - lines) / seconds)
                    stolen = (steal_seconds() - steal) / seconds
                finally:
                    if other is not None:
                        other.kill()
                        other.wait(STOP_TIMEOUT_S)
                click.echo(f"  {'burner' if burning else 'idle  '} {rates[-1]:6.1f} fps (steal {stolen:.1%} of a core)")
        finally:
            classify.send_signal(signal.SIGTERM)
            classify.wait(STOP_TIMEOUT_S)
    ratios = [rates[i] / ((rates[i - 1] + rates[i + 1]) / 2) for i in range(1, len(rates) - 1, 2)]
    expected = sum((rates[i - 1] + rates[i + 1]) / 2 for i in range(1, len(rates) - 1, 2))
    click.echo(f"burner at {duty:.0%} of a core: slice ratios {', '.join(f'{r:.3f}' for r in ratios)}; "
               f"pooled {sum(rates[1::2]) / expected:.3f} of the idle rate")


if __name__ == "__main__":
    main()
