"""The live view in a real browser: Debian's headless Chromium, driven by selenium through Debian's
chromedriver, against the page of a real `edge-classify --camera VIDEO --loop --serve` process.

The camera is a looping video that alternates two synthetic scenes (circle, stripes) every second,
classified by the session's tiny int8 model; the server runs on 127.0.0.1, a free port, with a
token and `--save`, only while this module runs. The tests check what a person sees: the video
moves, the label is /api/latest's, fps and latency are numbers that change, the save control
writes a JPEG into DIR/<label>/, and without the token nothing is served. One screenshot of the
whole page is kept: at $LIVE_VIEW_SCREENSHOT when set (CI keeps it), else in the test's tmp_path.

Skipped, with the reason, where chromium, chromedriver, selenium, OpenCV or the [serve] extra are
missing.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("cv2", reason="OpenCV (the [camera] extra) writes the video the camera plays")
pytest.importorskip("starlette", reason="the live view needs the [serve] extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="the live view needs the [serve] extra (starlette, uvicorn)")
pytest.importorskip("selenium", reason="selenium (the [dev] extra) drives the browser")

from PIL import Image  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

from benchmarks.screenshot_live_view import browser_paths, start_chromium, start_live_view, wait_for  # noqa: E402
from edge_runtime.serve.security import UNAUTHORIZED_MESSAGE  # noqa: E402
from live_fixtures import scene, upscale, write_video  # noqa: E402

pytest_plugins = ("runtime_fixtures",)

CHROMIUM, CHROMEDRIVER = browser_paths()
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("needs Debian's chromium and chromedriver on the PATH (apt install chromium chromium-driver)",
                allow_module_level=True)

TOKEN = "browser-Test_token-22"
SCENES = ("circle", "stripes")
VIDEO_FPS = 10.0
FRAMES_PER_SCENE = 10  # a new scene every second
SCENE_SCALE = 5  # the 64x64 scenes become 320x320 video frames: small on disk, resized by the runtime
FRAME_SIDE = 64 * SCENE_SCALE
WINDOW = (1000, 900)
WAIT_S = 30.0  # the longest any one condition is waited for
HTTP_TIMEOUT_S = 5.0
SCREENSHOT_ENV = "LIVE_VIEW_SCREENSHOT"
NO_VALUE = "–"  # what the page shows before the first answer


@pytest.fixture(scope="module")
def live(runtime_models, tmp_path_factory: pytest.TempPathFactory):
    """edge-classify serving the looping two-scene video with a token and --save; SIGTERM at the end."""
    folder = tmp_path_factory.mktemp("live-view-browser")
    video = write_video(folder / "camera.avi", [upscale(scene(name), SCENE_SCALE) for name in SCENES],
                        FRAMES_PER_SCENE, VIDEO_FPS)
    process = start_live_view(["-m", str(runtime_models.int8), "--camera", str(video), "--loop", "-k", "3",
                               "--token", TOKEN, "--save", str(folder / "frames")], folder / "process")
    process.save_dir = folder / "frames"
    yield process
    stderr = process.stop()
    assert process.process.returncode == 0, stderr


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium(CHROMIUM, CHROMEDRIVER, *WINDOW)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, live):
    """The page opened with its token, once it draws an answer."""
    browser.get(live.url)
    wait_for(lambda: text(browser, "label") not in ("", NO_VALUE), WAIT_S, "the page's first answer")
    return browser


def text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text.strip()


def api(live, path: str, token: str | None = TOKEN) -> tuple[int, bytes]:
    request = urllib.request.Request(live.base_url + path,
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def test_the_video_shows_moving_frames(page) -> None:
    video = page.find_element(By.ID, "video")
    size = wait_for(lambda: page.execute_script(
        "return arguments[0].naturalWidth ? [arguments[0].naturalWidth, arguments[0].naturalHeight] : null", video),
        WAIT_S, "the first video frame")
    assert size == [FRAME_SIDE, FRAME_SIDE]  # the camera's frames, under the 640 px cap: not downscaled
    first_picture, first_frame = video.screenshot_as_png, int(text(page, "frame"))
    # The scenes swap every second: within a few seconds the picture must have changed.
    wait_for(lambda: video.screenshot_as_png != first_picture, 3 * FRAMES_PER_SCENE / VIDEO_FPS,
             "a different picture in the video", every_s=0.3)
    assert int(text(page, "frame")) > first_frame


def test_the_label_shown_is_the_apis_latest(page, live) -> None:
    seen = []

    def agree() -> bool:  # the answer may change between reads: both page reads must bracket the API's
        before = text(page, "label")
        status, body = api(live, "/api/latest")
        after = text(page, "label")
        seen.append((before, status, json.loads(body).get("label"), after))
        return status == 200 and before == json.loads(body)["label"] == after

    wait_for(agree, WAIT_S, "the page and /api/latest to agree", every_s=0.2)
    assert seen[-1][0] in SCENES, seen
    # Over the scenes' swaps the page shows both answers: it follows the camera.
    wait_for(lambda: {text(page, "label")} - {seen[-1][0]}, 3 * FRAMES_PER_SCENE / VIDEO_FPS,
             "the other scene's answer", every_s=0.1)
    assert {seen[-1][0], text(page, "label")} == set(SCENES)


def test_fps_and_latency_are_numbers_that_update(page) -> None:
    samples = []
    for _ in range(10):
        samples.append((int(text(page, "frame")), text(page, "fps"), text(page, "latency")))
        time.sleep(0.3)
    frames = [frame for frame, _, _ in samples]
    fps = [float(value) for _, value, _ in samples]  # a number, not the placeholder
    latency = [float(value) for _, _, value in samples]
    assert frames == sorted(frames) and frames[-1] > frames[0]
    # The video plays at its own rate, as a camera would: the page's fps is that rate.
    assert all(0.5 * VIDEO_FPS <= value <= 1.5 * VIDEO_FPS for value in fps), samples
    assert all(value > 0 for value in latency)
    assert len(set(latency)) > 1 or len(set(fps)) > 1, samples  # redrawn with each answer


def test_the_save_control_writes_a_jpeg_into_the_class_folder(page, live, tmp_path: Path) -> None:
    try:
        wait_for(lambda: page.find_element(By.ID, "capture-button").is_enabled(), WAIT_S, "the save control")
        Select(page.find_element(By.ID, "capture-label")).select_by_value("stripes")
        page.find_element(By.ID, "capture-button").click()
        saved = wait_for(lambda: list((live.save_dir / "stripes").glob("*.jpg")), WAIT_S, "stripes/*.jpg")
        wait_for(lambda: text(page, "capture-result").startswith("Saved"), WAIT_S, "the save's message")
        assert text(page, "capture-result") == f"Saved as stripes: {saved[0]}"

        page.find_element(By.ID, "capture-new").send_keys("feeder")
        page.find_element(By.ID, "capture-button").click()
        typed = wait_for(lambda: list((live.save_dir / "feeder").glob("*.jpg")), WAIT_S, "feeder/*.jpg")
        wait_for(lambda: "feeder" in text(page, "capture-result"), WAIT_S, "the second save's message")
        assert text(page, "capture-result") == f"Saved as feeder: {typed[0]}"
        assert Select(page.find_element(By.ID, "capture-label")).first_selected_option.text == "feeder"
    finally:
        keep_screenshot(page, tmp_path)
    for path in (saved[0], typed[0]):
        with Image.open(path) as image:  # the full-resolution frame, a whole JPEG
            assert image.format == "JPEG" and image.size == (FRAME_SIDE, FRAME_SIDE)
            image.load()
    records = [json.loads(line) for line in (live.save_dir / "captures.jsonl").read_text().splitlines()]
    assert [(record["file"], record["label"], record["reason"]) for record in records] == [
        (f"stripes/{saved[0].name}", "stripes", "page"), (f"feeder/{typed[0].name}", "feeder", "page")]


def keep_screenshot(driver, tmp_path: Path) -> None:
    """The whole page as a PNG, where CI keeps it ($LIVE_VIEW_SCREENSHOT) or in tmp_path."""
    target = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "live-view.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": WINDOW[0], "height": height, "deviceScaleFactor": 1, "mobile": False})
    try:
        target.write_bytes(driver.get_screenshot_as_png())
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    with Image.open(target) as image:
        assert image.size == (WINDOW[0], height)


def test_without_the_token_nothing_is_served(browser, live) -> None:
    browser.get(live.base_url + "/")
    shown = browser.find_element(By.TAG_NAME, "pre").text  # Chromium shows a JSON answer as text
    assert json.loads(shown) == {"error": UNAUTHORIZED_MESSAGE}
    assert browser.find_elements(By.ID, "video") == [] and browser.find_elements(By.ID, "label") == []
    for path in ("/", "/video.mjpg", "/api/latest", "/static/app.js"):
        assert api(live, path, token=None)[0] == 401, path
        assert api(live, path, token="not-" + TOKEN)[0] == 401, path
    assert api(live, "/api/latest")[0] == 200
    browser.get(live.url)  # the address edge-classify printed carries the token: the page works
    wait_for(lambda: text(browser, "label") in SCENES, WAIT_S, "an answer on the page opened with the token")
