"""Live classification: OpenCV on a real video file, picamera2 through a stand-in module,
colour order, reconnecting a source that drops out, --frames and Ctrl-C.

No camera is needed: the video is written here with cv2.VideoWriter, and `picamera2` is a
stand-in module placed in sys.modules that behaves like the real one's documented interface.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_runtime.classify import Classifier
from edge_runtime.cli import main
from edge_runtime.sources import camera as camera_module
from edge_runtime.sources.camera import (CameraError, FrameSource, OpenCVSource, PiCamera2Source, bgr_to_rgb, frames,
                                         open_source)
from edge_runtime.sources.live import LiveStatus, classify_frames, worth_reporting
import live_fixtures
from live_fixtures import upscale
from synthetic import CLASS_NAMES, synthetic_arrays

pytest_plugins = ("runtime_fixtures",)

VIDEO_FPS = 10
FRAMES_PER_SCENE = 8
PI_FRAME_SHAPE = (240, 320, 3)
PURE_BLUE_BGR = (255, 0, 0)  # how a blue pixel sits in memory in a BGR frame
PURE_RED_BGR = (0, 0, 255)
MJPEG_TOLERANCE = 40  # MJPEG may shift a saturated colour a little


def write_video(path: Path, scenes: list[np.ndarray], frames_per_scene: int = FRAMES_PER_SCENE) -> Path:
    """An MJPG .avi with each RGB scene repeated `frames_per_scene` times."""
    return live_fixtures.write_video(path, scenes, frames_per_scene, VIDEO_FPS)


@pytest.fixture(scope="module")
def two_scene_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A circle scene, then a stripes scene, FRAMES_PER_SCENE frames each."""
    images, labels = synthetic_arrays(1, seed=21)
    circle = images[list(labels).index(CLASS_NAMES.index("circle"))]
    stripes = images[list(labels).index(CLASS_NAMES.index("stripes"))]
    return write_video(tmp_path_factory.mktemp("video") / "scenes.avi", [upscale(circle), upscale(stripes)])


class PixelSpy:
    """Wraps Classifier.scores to record the pixels that reach the model."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.pixels: list[np.ndarray] = []
        original = Classifier.scores

        def scores(classifier: Classifier, pixels: np.ndarray) -> np.ndarray:
            self.pixels.append(np.array(pixels))
            return original(classifier, pixels)

        monkeypatch.setattr(Classifier, "scores", scores)


def printed_labels(stdout: str) -> list[str]:
    """The labels of the status lines, consecutive repeats collapsed."""
    labels: list[str] = []
    for line in stdout.splitlines():
        label = line.split()[0]
        if not labels or labels[-1] != label:
            labels.append(label)
    return labels


# --- OpenCV on a real video file ----------------------------------------------------------------

def test_video_file_is_classified_scene_by_scene_until_it_ends(runtime_models, two_scene_video: Path) -> None:
    result = CliRunner().invoke(main, ["--model", str(runtime_models.int8), "--camera", str(two_scene_video)])
    assert result.exit_code == 0, result.output
    assert printed_labels(result.stdout) == ["circle", "stripes"]
    first = result.stdout.splitlines()[0].split()
    assert first[0] == "circle" and float(first[1]) >= 0.5 and first[3] == "fps"
    assert f"{2 * FRAMES_PER_SCENE} frames in" in result.stderr
    assert "stopped by end of stream" in result.stderr
    assert f"most frequent: circle (50% of frames)" in result.stderr or "stripes (50% of frames)" in result.stderr


def test_frames_option_stops_after_n_frames(runtime_models, two_scene_video: Path) -> None:
    result = CliRunner().invoke(main, ["--model", str(runtime_models.int8), "--camera", str(two_scene_video),
                                       "--frames", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert "3 frames in" in result.stderr and "stopped by --frames" in result.stderr
    import json

    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [record["frame"] for record in records] == [1, 2, 3]  # one line per frame
    assert records[0]["label"] == "circle"
    assert set(records[0]) == {"frame", "label", "score", "top_k", "fps", "latency_ms", "time"}
    assert records[0]["top_k"] == [{"label": "circle", "score": records[0]["score"]}]


def test_opencv_frames_reach_the_model_as_rgb(runtime_models, tmp_path: Path, monkeypatch) -> None:
    red = np.zeros((32, 48, 3), dtype=np.uint8)
    red[...] = (255, 0, 0)  # RGB red; write_video stores it as BGR like any OpenCV writer
    video = write_video(tmp_path / "red.avi", [red], frames_per_scene=2)
    spy = PixelSpy(monkeypatch)
    result = CliRunner().invoke(main, ["--model", str(runtime_models.int8), "--camera", str(video)])
    assert result.exit_code == 0, result.output
    assert len(spy.pixels) == 2
    pixels = spy.pixels[0].astype(int)
    assert pixels.shape == (32, 32, 3)
    assert pixels[..., 0].min() >= 255 - MJPEG_TOLERANCE
    assert pixels[..., 1:].max() <= MJPEG_TOLERANCE


def test_a_video_file_that_cannot_be_opened_is_exit_1_one_line(runtime_models, tmp_path: Path) -> None:
    video = tmp_path / "broken.avi"
    video.write_text("not a video")
    result = CliRunner().invoke(main, ["--model", str(runtime_models.int8), "--camera", str(video)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == f"Error: video {video}: cannot open it"
    assert "Traceback" not in result.output


def test_without_opencv_the_message_says_what_to_install(runtime_models, two_scene_video: Path,
                                                          monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)
    result = CliRunner().invoke(main, ["--model", str(runtime_models.int8), "--camera", str(two_scene_video)])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("Error: OpenCV is not installed; install OpenCV for USB cameras, video "
                                     "files and streams: pip install opencv-python-headless")


def test_with_neither_picamera2_nor_opencv_the_message_names_both_installs(runtime_models, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)
    monkeypatch.setitem(sys.modules, "picamera2", None)
    result = CliRunner().invoke(main, ["--model", str(runtime_models.int8), "--camera"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: neither picamera2 nor OpenCV can be imported: for the Pi camera, sudo apt install python3-picamera2 "
        "and make the venv with --system-site-packages; for USB cameras, video files and streams, install the "
        "[camera] extra (opencv-python-headless); see deploy/README.md")


def test_opencvs_own_warnings_stay_off_the_terminal_when_a_camera_cannot_be_opened(runtime_models, capfd) -> None:
    pytest.importorskip("cv2")
    missing_camera = "97"  # an index no machine running the tests has: OpenCV warns "can't open camera by index"
    result = CliRunner().invoke(main, ["--model", str(runtime_models.int8), "--camera", missing_camera])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == "Error: camera 97 (OpenCV): cannot open it"
    native = capfd.readouterr()  # what reached file descriptors 1 and 2, under click's own capture
    assert "WARN" not in native.err + native.out and "[ERROR" not in native.err


def test_what_opencvs_backends_print_themselves_goes_to_the_debug_log(monkeypatch, capfd, caplog) -> None:
    import logging
    import os

    class Capture:
        def __init__(self, source):
            os.write(2, b"[ WARN:0@0.1] global cap_v4l.cpp:914 open VIDEOIO(V4L2:/dev/video5): can't open camera\n")

        def isOpened(self) -> bool:
            return False

        def release(self) -> None:
            pass

    monkeypatch.setitem(sys.modules, "cv2", types.SimpleNamespace(VideoCapture=Capture))
    with caplog.at_level(logging.DEBUG, logger="edge_runtime.sources.camera"):
        with pytest.raises(CameraError, match=r"^camera 5 \(OpenCV\): cannot open it$"):
            OpenCVSource(5).open()
    assert capfd.readouterr().err == ""
    assert "opencv: [ WARN:0@0.1] global cap_v4l.cpp:914 open VIDEOIO(V4L2:/dev/video5): can't open camera" in caplog.text


# --- picamera2 through a stand-in module --------------------------------------------------------

class FakePicamera2:
    """The part of picamera2.Picamera2 the runtime uses, recording how it was driven."""

    instances: list["FakePicamera2"] = []

    def __init__(self) -> None:
        self.config: dict | None = None
        self.started = self.stopped = self.closed = False
        self.captures = 0
        FakePicamera2.instances.append(self)

    def create_preview_configuration(self, main: dict) -> dict:
        return {"main": dict(main), "kind": "preview"}

    def configure(self, config: dict) -> None:
        self.config = config

    def start(self) -> None:
        self.started = True

    def capture_array(self, stream: str = "main") -> np.ndarray:
        assert self.started and stream == "main"
        self.captures += 1
        width, height = self.config["main"]["size"]
        frame = np.empty((height, width, 3), dtype=np.uint8)
        frame[...] = PURE_BLUE_BGR  # RGB888 arrays are B, G, R in memory
        return frame

    def stop(self) -> None:
        self.stopped = True

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_picamera2(monkeypatch: pytest.MonkeyPatch) -> type[FakePicamera2]:
    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2
    module.__spec__ = importlib.machinery.ModuleSpec("picamera2", loader=None)
    monkeypatch.setitem(sys.modules, "picamera2", module)
    FakePicamera2.instances = []
    return FakePicamera2


@pytest.mark.parametrize("source", [None, "picamera2"])
def test_picamera2_blue_bgr_frame_reaches_the_model_as_rgb_blue(runtime_models, fake_picamera2, monkeypatch,
                                                                source: str | None) -> None:
    spy = PixelSpy(monkeypatch)
    args = ["--model", str(runtime_models.int8), "--camera"] + ([source] if source else []) + ["--frames", "4"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "classifying frames from Raspberry Pi camera (picamera2)" in result.stderr
    assert "4 frames in" in result.stderr
    camera, = fake_picamera2.instances
    assert camera.config["main"] == {"size": (320, 240), "format": "RGB888"}
    assert camera.captures == 4 and camera.stopped and camera.closed
    assert len(spy.pixels) == 4
    assert (spy.pixels[0] == (0, 0, 255)).all()  # R, G, B: blue


def test_auto_source_prefers_picamera2_and_falls_back_to_opencv_camera_0(fake_picamera2, monkeypatch) -> None:
    assert isinstance(open_source(None), PiCamera2Source)
    monkeypatch.setitem(sys.modules, "picamera2", None)
    fallback = open_source("auto")
    assert isinstance(fallback, OpenCVSource) and fallback.source == 0 and fallback.live


def test_picamera2_asked_for_but_not_importable_says_apt_and_system_site_packages(runtime_models,
                                                                                    monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)
    result = CliRunner().invoke(main, ["--model", str(runtime_models.int8), "--camera", "picamera2"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("Error: picamera2 cannot be imported: sudo apt install python3-picamera2, in a "
                                     "venv made with --system-site-packages (see deploy/README.md)")


def test_a_picamera2_that_fails_to_import_is_one_line_not_a_traceback(runtime_models, monkeypatch) -> None:
    numpy_mismatch = "numpy.dtype size changed, may indicate binary incompatibility"

    def broken(name: str):
        raise ValueError(numpy_mismatch)

    module = types.ModuleType("picamera2")
    module.__getattr__ = broken  # `from picamera2 import Picamera2` raises as a wrong numpy makes it
    module.__spec__ = importlib.machinery.ModuleSpec("picamera2", loader=None)
    monkeypatch.setitem(sys.modules, "picamera2", module)
    result = CliRunner().invoke(main, ["--model", str(runtime_models.int8), "--camera"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"Error: picamera2 is installed but fails to import (ValueError: "
                                     f"{numpy_mismatch}); see deploy/README.md, 'Which numpy'")
    assert "Traceback" not in result.output


def test_picamera2_without_a_camera_is_a_camera_error(fake_picamera2, monkeypatch) -> None:
    def no_camera(self) -> None:
        raise IndexError("list index out of range")

    monkeypatch.setattr(FakePicamera2, "__init__", no_camera)
    with pytest.raises(CameraError, match=r"^Raspberry Pi camera \(picamera2\): cannot start the camera "
                                          r"\(IndexError: list index out of range\)$"):
        PiCamera2Source().open()


# --- sources and colour order -------------------------------------------------------------------

def test_open_source_reads_indices_urls_and_files(two_scene_video: Path, tmp_path: Path) -> None:
    index = open_source("2")
    assert isinstance(index, OpenCVSource) and index.source == 2 and index.live
    stream = open_source("rtsp://camera.local/stream")
    assert stream.live and stream.description == "stream rtsp://camera.local/stream"
    video = open_source(str(two_scene_video))
    assert not video.live and video.description == f"video {two_scene_video}"
    with pytest.raises(CameraError, match=r"nothing\.avi: no such video file, and not a camera index or stream URL"):
        open_source(str(tmp_path / "nothing.avi"))
    with pytest.raises(CameraError, match="is a folder"):
        open_source(str(tmp_path))


def test_bgr_to_rgb_reverses_the_colour_channels_and_drops_padding() -> None:
    bgrx = np.array([[[1, 2, 3, 99]]], dtype=np.uint8)
    assert bgr_to_rgb(bgrx).tolist() == [[[3, 2, 1]]]
    assert bgr_to_rgb(bgrx[..., :3]).tolist() == [[[3, 2, 1]]]
    grey = np.zeros((2, 2), dtype=np.uint8)
    assert bgr_to_rgb(grey) is grey


# --- reconnecting -------------------------------------------------------------------------------

class ScriptedSource(FrameSource):
    """A live source whose reads follow a script: a frame, or None for a dropped read."""

    description = "test camera"

    def __init__(self, script: list[bool], live: bool = True, fail_opens: int = 0,
                 interrupt_after: int | None = None):
        self.script = list(script)
        self.live = live
        self.opens = self.closes = 0
        self.fail_opens = fail_opens
        self.delivered = 0
        self.interrupt_after = interrupt_after

    def open(self) -> None:
        self.opens += 1
        if self.opens > 1 and self.fail_opens > 0:
            self.fail_opens -= 1
            raise CameraError("test camera: cannot open it")

    def read(self) -> np.ndarray | None:
        if self.interrupt_after is not None and self.delivered >= self.interrupt_after:
            raise KeyboardInterrupt
        if not self.script or not self.script.pop(0):
            return None
        self.delivered += 1
        frame = np.zeros((48, 64, 3), dtype=np.uint8)
        frame[..., 0] = 200
        return frame

    def close(self) -> None:
        self.closes += 1


def test_a_dropped_live_source_is_reopened_and_a_frame_resets_the_count() -> None:
    source = ScriptedSource([True, False, False, True, False, True])
    source.open()
    sleeps: list[float] = []
    notes: list[str] = []
    stream = frames(source, max_reopens=2, reopen_delay_s=0.5, sleep=sleeps.append, notify=notes.append)
    received = [next(stream) for _ in range(3)]
    assert len(received) == 3
    assert source.opens == 1 + 3 and sleeps == [0.5, 0.5, 0.5]
    assert notes == ["test camera: no frame, reopening (1/2)", "test camera: no frame, reopening (2/2)",
                     "test camera: no frame, reopening (1/2)"]


def test_a_source_that_stays_away_ends_with_a_clear_camera_error() -> None:
    source = ScriptedSource([True, True], fail_opens=1)
    source.open()
    stream = frames(source, max_reopens=3, reopen_delay_s=0.0, sleep=lambda _: None)
    assert len([next(stream), next(stream)]) == 2
    with pytest.raises(CameraError) as caught:
        next(stream)
    assert str(caught.value) == ("test camera: stopped delivering frames and did not come back after 3 reopen "
                                 "attempts; check the connection or the stream")
    assert source.opens == 4  # the first open, then three attempts (one of which failed to open)


def test_a_video_file_ends_without_reopening() -> None:
    source = ScriptedSource([True, True, False], live=False)
    assert len(list(frames(source, sleep=lambda _: pytest.fail("must not wait")))) == 2
    assert source.closes == 0


def test_cli_reports_reopening_then_gives_up_with_exit_1(runtime_models, monkeypatch) -> None:
    source = ScriptedSource([True, True])
    monkeypatch.setattr(camera_module, "open_source", lambda _, **options: source)
    monkeypatch.setattr(camera_module, "DEFAULT_REOPEN_DELAY_S", 0.0)
    result = CliRunner().invoke(main, ["--model", str(runtime_models.int8), "--camera", "0"])
    assert result.exit_code == 1
    errors = result.stderr.strip().splitlines()
    assert [line for line in errors if "reopening" in line] == [
        f"test camera: no frame, reopening ({attempt}/3)" for attempt in (1, 2, 3)]
    assert errors[-2].startswith("2 frames in ") and "stopped by a lost source" in errors[-2]
    assert errors[-1] == ("Error: test camera: stopped delivering frames and did not come back after 3 "
                          "reopen attempts; check the connection or the stream")
    assert source.closes == 4  # three reopen attempts, then the final close of the with-block


def test_ctrl_c_stops_with_a_summary_and_exit_0(runtime_models, monkeypatch) -> None:
    source = ScriptedSource([True] * 10, interrupt_after=5)
    monkeypatch.setattr(camera_module, "open_source", lambda _, **options: source)
    result = CliRunner().invoke(main, ["--model", str(runtime_models.int8), "--camera"])
    assert result.exit_code == 0, result.output
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("5 frames in ") and "stopped by Ctrl-C" in summary
    assert source.closes == 1


def test_threshold_marks_live_frames_uncertain(runtime_models, monkeypatch) -> None:
    source = ScriptedSource([True] * 3)
    monkeypatch.setattr(camera_module, "open_source", lambda _, **options: source)
    result = CliRunner().invoke(main, ["--model", str(runtime_models.int8), "--camera", "--threshold", "1.0",
                                       "--frames", "3"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith("uncertain ")


# --- what is reported when ----------------------------------------------------------------------

def test_status_is_reported_on_label_change_and_otherwise_at_most_once_a_second() -> None:
    shown = LiveStatus(1, "cat", 0.91, 30.0, False)
    assert worth_reporting(None, shown, 0.0)
    assert worth_reporting(shown, LiveStatus(2, "dog", 0.91, 30.0, False), 0.01)
    assert not worth_reporting(shown, LiveStatus(2, "cat", 0.50, 30.0, False), 0.5)
    assert worth_reporting(shown, LiveStatus(2, "cat", 0.50, 30.0, False), 1.5)
    assert not worth_reporting(shown, LiveStatus(2, "cat", 0.912, 30.2, False), 5.0)  # same when rounded


def test_classify_frames_uses_one_classifier_for_every_frame(runtime_models, monkeypatch) -> None:
    classifier = Classifier(runtime_models.int8)
    built: list[object] = []
    monkeypatch.setattr("edge_runtime.interpreter.make_interpreter", lambda *a, **k: built.append(a))
    ticks = iter(np.arange(0.0, 100.0, 0.1))
    reports: list[LiveStatus] = []
    images, labels = synthetic_arrays(3, seed=22)
    summary = classify_frames(classifier, iter(images), reports.append, clock=lambda: float(next(ticks)))
    assert built == []
    assert summary.frames == len(images) and summary.stopped_by == "end of stream"
    assert [r.frame for r in reports][0] == 1
    # The clock is read as a frame's classification starts and as it ends: 0.1 s apart on the fake clock.
    assert abs(reports[0].fps - 5.0) < 1e-6 and abs(reports[0].latency_ms - 100.0) < 1e-6
    assert sum(summary.label_counts.values()) == len(images)
