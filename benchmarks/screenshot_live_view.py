"""The live view in a real browser: the README's screenshot, and the parts the browser test shares.

`start_live_view` runs `edge-classify --camera ... --serve 127.0.0.1:0` (a free port) as a real
subprocess and returns once it prints the page's address; `write_camera_video` makes the camera
a 640x480 clip of CIFAR-10 test pictures (or synthetic ones); `start_chromium` drives Debian's
headless Chromium through its chromedriver, both named by path, so selenium never downloads a
browser or a driver. The load benchmark (bench_live_view.py) and tests/test_live_view_browser.py
use them.

Run as a script it regenerates docs/live-view.png: the page, at 1000 px wide and its full height,
over a trained model (default artifacts/model_int8.tflite; `make train convert` makes one), with
the top 5 answers and one frame saved through the page's save control:

    .venv/bin/python benchmarks/screenshot_live_view.py [--model M] [--out docs/live-view.png] [--size 1000x0]

`--size WxH` with H 0 takes the page's full height; e.g. `--size 400x800 --out /tmp/phone.png`
shows it as a phone does.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "artifacts" / "model_int8.tflite"
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"
DEFAULT_OUT = REPO_ROOT / "docs" / "live-view.png"
LOOPBACK = "127.0.0.1"
FRAME_SIZE = (640, 480)  # width, height: a camera's VGA
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
PAGE_LOAD_TIMEOUT_S = 30.0
URL_LINE = re.compile(r"^live view: (http://127\.0\.0\.1:(\d+)/\S*)$", re.MULTILINE)
CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMEDRIVER_NAME = "chromedriver"
# The README's picture: one CIFAR-10 test picture held like a camera's view, at a camera's rate.
SCREENSHOT_VIDEO_FPS = 15.0
SCREENSHOT_PICTURE = "test/horse/0026.jpg"
SCREENSHOT_VIDEO_FRAMES = 150
# A window narrower than this is shown as a phone shows it (touch, mobile viewport).
PHONE_MAX_WIDTH = 600
SCREENSHOT_TOP_K = 5
SCREENSHOT_SETTLE_S = 4.0
SCREENSHOT_WAIT_S = 30.0


class LiveViewError(RuntimeError):
    """The edge-classify process did not start serving."""


@dataclasses.dataclass
class LiveProcess:
    """A running `edge-classify --camera ... --serve 127.0.0.1:0` and its page's address as printed."""

    process: subprocess.Popen
    url: str  # the page, with ?token=... when started with a token
    port: int
    stderr_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> str:
        """SIGTERM, as systemd stops it (edge-classify ends a camera run on it as on Ctrl-C, and a
        SIGINT would be ignored where this was started in the background by a shell without job
        control); killed when still running after `timeout_s`. Returns what it wrote to stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        return self.stderr()


def start_live_view(arguments: list[str], folder: Path, timeout_s: float = START_TIMEOUT_S) -> LiveProcess:
    """Start `edge-classify ARGUMENTS --serve 127.0.0.1:0` and return once it prints the page's
    address; its stdout and stderr go to files in `folder`. Stopped again if it prints none."""
    folder.mkdir(parents=True, exist_ok=True)
    stderr_path = folder / "edge-classify.err"
    command = [sys.executable, "-m", "edge_runtime.cli", *arguments, "--serve", f"{LOOPBACK}:0"]
    with open(folder / "edge-classify.out", "wb") as stdout, open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
    live = LiveProcess(process, "", 0, stderr_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = URL_LINE.search(live.stderr())
        if found:
            live.url, live.port = found.group(1), int(found.group(2))
            return live
        if process.poll() is not None:
            raise LiveViewError(f"edge-classify ended ({process.returncode}) before serving: "
                                f"{live.stderr().strip()[-500:]}")
        time.sleep(0.1)
    live.stop()
    raise LiveViewError(f"edge-classify printed no page address within {timeout_s:.0f} s: "
                        f"{live.stderr().strip()[-500:]}")


def write_camera_video(path: Path, pictures: list[Path], frames: int, fps: float, hold: int = 1) -> str:
    """A 640x480 MJPG clip declaring `fps`: `pictures` in turn, each for `hold` frames, stretched to
    the frame (the runtime's resize to the model's square undoes it) with a little sensor noise;
    smooth synthetic pictures when `pictures` is empty. Returns what it holds, in words."""
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, FRAME_SIZE)
    if not writer.isOpened():
        raise LiveViewError(f"OpenCV cannot write {path}")
    rng = np.random.default_rng(0)
    picture = None
    for index in range(frames):
        if index % hold == 0:
            if pictures:
                picture = cv2.imread(str(pictures[(index // hold) % len(pictures)]))
            else:  # coloured blobs
                picture = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            picture = cv2.resize(picture, FRAME_SIZE, interpolation=cv2.INTER_CUBIC).astype(np.float32)
        writer.write(np.clip(picture + rng.normal(0, 3, picture.shape), 0, 255).astype(np.uint8))
    writer.release()
    what = f"{len(set(pictures))} CIFAR-10 test pictures" if pictures else "synthetic pictures"
    return f"{what}, {frames} frames of {FRAME_SIZE[0]}x{FRAME_SIZE[1]} declaring {fps:g} fps"


def browser_paths() -> tuple[str | None, str | None]:
    """(chromium, chromedriver) as installed on the PATH (Debian: chromium, chromium-driver)."""
    chromium = next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)
    return chromium, shutil.which(CHROMEDRIVER_NAME)


def start_chromium(chromium: str, chromedriver: str, width: int, height: int) -> Any:
    """Headless Chromium driven by selenium through the given chromedriver (no Selenium Manager,
    no download); the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # --no-sandbox: Chromium's sandbox refuses to start as root and in many containers; the browser
    # only ever loads the live view on loopback here.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
                     "--disable-background-networking", "--disable-extensions", "--hide-scrollbars",
                     "--force-device-scale-factor=1", f"--window-size={width},{height}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
    return driver


def wait_for(condition, timeout_s: float, what: str, every_s: float = 0.1) -> Any:
    """Poll `condition()` until it returns something true; LiveViewError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise LiveViewError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def set_viewport(driver: Any, width: int, height: int) -> None:
    """The page's viewport exactly WxH CSS pixels at scale 1 (a window's size would include its frame)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < PHONE_MAX_WIDTH})


def page_screenshot(driver: Any, url: str, width: int, height: int, save_label: bool) -> bytes:
    """The page at `url` once it shows a video frame and an answer, `height` 0 for its full height;
    with `save_label`, after saving one frame through the save control under the answer shown."""
    from selenium.webdriver.common.by import By

    set_viewport(driver, width, height or PHONE_MAX_WIDTH)
    driver.get(url)
    video = driver.find_element(By.ID, "video")
    wait_for(lambda: driver.execute_script("return arguments[0].naturalWidth", video), SCREENSHOT_WAIT_S,
             "the first video frame")
    label = wait_for(lambda: driver.find_element(By.ID, "label").text.strip("–"), SCREENSHOT_WAIT_S, "an answer")
    time.sleep(SCREENSHOT_SETTLE_S)  # the fps settles and the bars move to the current answer
    if save_label:
        driver.find_element(By.ID, "capture-new").send_keys(label)
        driver.find_element(By.ID, "capture-button").click()
        wait_for(lambda: driver.find_element(By.ID, "capture-result").text.startswith("Saved"), SCREENSHOT_WAIT_S,
                 "the saved frame")
    if height == 0:
        set_viewport(driver, width, driver.execute_script("return document.documentElement.scrollHeight"))
        time.sleep(0.5)  # one more frame at the new size
    return driver.get_screenshot_as_png()


@click.command()
@click.option("--model", type=click.Path(exists=False, dir_okay=False, path_type=Path), default=DEFAULT_MODEL,
              show_default=True, help="A trained .tflite model (`make train convert` makes one).")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATA, show_default=True,
              help="The CIFAR-10 JPEG tree the pictures come from (synthetic pictures without it).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True)
@click.option("--size", default="1000x0", show_default=True, help="Window WxH; H 0: the page's full height.")
def main(model: Path, data: Path, out: Path, size: str) -> None:
    """Write a PNG of the live view over a real edge-classify process."""
    if not model.is_file():
        raise click.ClickException(f"no model at {model}: make one with `make train convert`, or pass --model")
    width, _, height = size.partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise click.BadParameter(f"expected WxH, e.g. 1000x0, not {size!r}", param_hint="--size")
    chromium, chromedriver = browser_paths()
    if chromium is None or chromedriver is None:
        raise click.ClickException("needs chromium and chromedriver on the PATH (Debian: apt install chromium "
                                   "chromium-driver)")
    pictures = [data / SCREENSHOT_PICTURE] if (data / SCREENSHOT_PICTURE).is_file() else []
    with tempfile.TemporaryDirectory(prefix="live-view-shot-") as work:
        folder = Path(work)
        video = folder / "camera.avi"
        what = write_camera_video(video, pictures, SCREENSHOT_VIDEO_FRAMES, SCREENSHOT_VIDEO_FPS,
                                  hold=SCREENSHOT_VIDEO_FRAMES)
        click.echo(f"camera: {what}", err=True)
        live = start_live_view(["-m", str(model), "--camera", str(video), "--loop", "-k", str(SCREENSHOT_TOP_K),
                                "--token", secrets.token_urlsafe(16), "--save", str(folder / "frames")], folder)
        driver = None
        try:
            driver = start_chromium(chromium, chromedriver, int(width), int(height) or 900)
            png = page_screenshot(driver, live.url, int(width), int(height), save_label=True)
        finally:
            if driver is not None:
                driver.quit()
            live.stop()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)
    click.echo(f"wrote {out} ({len(png) / 1024:.0f} KiB)", err=True)


if __name__ == "__main__":
    main()
