"""The camera run's output as its documentation promises: one line per frame (or --on-change),
-k, -o appending whole lines, a video played at its own rate and --loop, SIGTERM ending a run as
Ctrl-C does, and the option combinations that are refused. A real video file is the camera."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_runtime.cli import main
from edge_runtime.live_run import LineSink
from edge_runtime.sources.camera import OpenCVSource
from live_fixtures import scene, write_video
from runtime_fixtures import ctrl_c_as_in_a_terminal
from synthetic import CLASS_NAMES

pytest_plugins = ("runtime_fixtures",)
pytest.importorskip("cv2")

FRAMES_PER_SCENE = 8
FAST_FPS = 200  # fast enough that pacing costs the tests little
TERM_WAIT_S = 60


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 frames of a circle, then 8 of stripes."""
    return write_video(tmp_path_factory.mktemp("clip") / "clip.avi", [scene("circle"), scene("stripes")],
                       FRAMES_PER_SCENE, FAST_FPS)


def run(runtime_models, *arguments: str):
    return CliRunner().invoke(main, ["--model", str(runtime_models.int8), *arguments])


def test_json_gives_one_line_per_classified_frame(runtime_models, clip: Path) -> None:
    result = run(runtime_models, "--camera", str(clip), "--json")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [record["frame"] for record in records] == list(range(1, 2 * FRAMES_PER_SCENE + 1))
    assert [record["label"] for record in records] == ["circle"] * FRAMES_PER_SCENE + ["stripes"] * FRAMES_PER_SCENE
    assert all(record["latency_ms"] > 0 for record in records)


def test_on_change_writes_a_line_when_the_answer_changes(runtime_models, clip: Path) -> None:
    result = run(runtime_models, "--camera", str(clip), "--json", "--on-change")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    # The whole clip lasts under the one-second report interval: only the two answers are written.
    assert [(record["frame"], record["label"]) for record in records] == [(1, "circle"), (FRAMES_PER_SCENE + 1,
                                                                                           "stripes")]


def test_top_k_applies_to_camera_frames(runtime_models, clip: Path) -> None:
    result = run(runtime_models, "--camera", str(clip), "--json", "-k", "3", "--frames", "2")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[0])
    assert [entry["label"] for entry in record["top_k"]][0] == "circle" and len(record["top_k"]) == 3
    scores = [entry["score"] for entry in record["top_k"]]
    assert scores == sorted(scores, reverse=True)
    text = run(runtime_models, "--camera", str(clip), "-k", "2", "--frames", "1")
    assert text.stdout.count(" | ") == 1 and text.stdout.startswith("circle ")


def test_output_appends_whole_lines_to_a_file(runtime_models, clip: Path, tmp_path: Path) -> None:
    log = tmp_path / "camera.jsonl"
    log.write_text('{"earlier": true}\n')
    for _ in range(2):
        result = run(runtime_models, "--camera", str(clip), "--json", "-o", str(log))
        assert result.exit_code == 0, result.output
        assert result.stdout == ""
    lines = log.read_text().splitlines()
    assert lines[0] == '{"earlier": true}'
    records = [json.loads(line) for line in lines[1:]]
    assert [record["frame"] for record in records] == list(range(1, 17)) * 2


def test_output_to_a_missing_folder_is_one_line_before_any_frame(runtime_models, clip: Path, tmp_path: Path) -> None:
    target = tmp_path / "no-such-folder" / "camera.jsonl"
    result = run(runtime_models, "--camera", str(clip), "-o", str(target))
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"Error: {target}: cannot write results (folder {target.parent} does not "
                                     "exist)")


def test_line_sink_finishes_or_reports_a_line(tmp_path: Path) -> None:
    sink = LineSink(str(tmp_path / "log.jsonl"))
    sink.write_line('{"frame": 1}')
    sink.close()
    assert (tmp_path / "log.jsonl").read_text() == '{"frame": 1}\n'
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system to stand for a full disk")
    full = LineSink("/dev/full")
    with pytest.raises(Exception, match=r"^/dev/full: cannot write results \(No space left on device\)$"):
        full.write_line("{}")
    full.close()


def test_loop_replays_the_video_until_frames(runtime_models, clip: Path) -> None:
    result = run(runtime_models, "--camera", str(clip), "--loop", "--frames", "40", "--json")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 40 and "stopped by --frames" in result.stderr
    # The third pass starts with the circle again.
    assert records[2 * FRAMES_PER_SCENE]["label"] == "circle"


def test_a_video_plays_at_its_own_frame_rate(tmp_path: Path) -> None:
    video = write_video(tmp_path / "ten.avi", [scene("circle")], 5, 10)
    now = [100.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    source = OpenCVSource(str(video), clock=lambda: now[0], sleep=sleep)
    with source:
        frames = [source.read() for _ in range(6)]
    assert [frame is None for frame in frames] == [False] * 5 + [True]
    assert waits == pytest.approx([0.1] * 4)  # the first frame at once, then one every 1/10 s


def test_a_video_behind_its_schedule_is_not_rushed(tmp_path: Path) -> None:
    video = write_video(tmp_path / "ten.avi", [scene("circle")], 4, 10)
    now = [0.0]
    waits: list[float] = []
    source = OpenCVSource(str(video), clock=lambda: now[0], sleep=waits.append)
    with source:
        source.read()
        now[0] += 5.0  # a stall of five seconds: the video's clock restarts, no burst of catching up
        source.read()
        source.read()
    assert waits == pytest.approx([0.1])


def test_sigterm_ends_a_run_as_ctrl_c_does(runtime_models, clip: Path, tmp_path: Path) -> None:
    log = tmp_path / "camera.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "edge_runtime.cli", "--model", str(runtime_models.int8),
                                "--camera", str(clip), "--loop", "--json", "-o", str(log)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TERM_WAIT_S
        while time.monotonic() < deadline and (not log.exists() or log.stat().st_size == 0):
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=TERM_WAIT_S)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "stopped by Ctrl-C" in stderr.splitlines()[-1]
    assert all(json.loads(line)["frame"] for line in log.read_text().splitlines())  # no torn last line


@pytest.mark.parametrize("arguments, message", [
    (["--camera", "0", "--loop"], "--loop only applies to --camera with a video file"),
    (["--camera", "--save-when", "unsure:0.5"], "--save-when only applies to --save"),
    (["--camera", "--serve-fps", "5"], "--serve-fps only applies to --serve"),
    (["--camera", "--token", "abc"], "--token only applies to --serve"),
    (["photo.jpg", "--on-change"], "--on-change only applies to --camera"),
    (["photo.jpg", "--serve"], "--serve only applies to --camera"),
    (["--camera", "--save", "frames"], "--save needs a --save-when rule, or --serve for the live view's save control"),
    (["--camera", "--save", "f", "--save-max", "3", "--serve"], "--save-max only applies to --save-when"),
])
def test_live_options_without_what_they_refine_are_refused(runtime_models, arguments: list[str],
                                                           message: str) -> None:
    result = run(runtime_models, *arguments)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == f"Error: {message}"


@pytest.mark.parametrize("address", ["http", "host:", "70000", "example:-1", "::1:8080"])
def test_a_bad_serve_address_is_a_usage_error(runtime_models, clip: Path, address: str) -> None:
    result = run(runtime_models, "--camera", str(clip), "--serve", address)
    assert result.exit_code == 2
    assert f"Invalid value for '--serve': cannot read the address '{address}'" in result.stderr


# --- --save: frames saved by rules from the command line -------------------------------------------

def saved_files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)).split("/")[0] for path in folder.rglob("*.jpg"))


def test_save_when_unsure_saves_at_most_the_cap_into_the_answers_folder(runtime_models, clip: Path,
                                                                        tmp_path: Path) -> None:
    from PIL import Image

    frames = tmp_path / "frames"
    result = run(runtime_models, "--camera", str(clip), "--save", str(frames), "--save-when", "unsure:1.0",
                 "--save-max", "3")
    assert result.exit_code == 0, result.output
    assert saved_files(frames) == ["circle"] * 3  # every frame matches; the first three fit under the cap
    assert result.stderr.strip().splitlines()[-1] == (f"saved 3 frames to {frames} (13 over the 3-a-minute cap "
                                                      "not saved)")
    records = [json.loads(line) for line in (frames / "captures.jsonl").read_text().splitlines()]
    assert [record["reason"] for record in records] == ["unsure:1.0"] * 3
    assert [record["answer"]["frame"] for record in records] == [1, 2, 3]
    for record in records:
        with Image.open(frames / record["file"]) as image:
            assert image.format == "JPEG" and image.size == (64, 64)  # the frame as the camera gave it


def test_save_when_label_saves_only_that_answer(runtime_models, clip: Path, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    result = run(runtime_models, "--camera", str(clip), "--save", str(frames), "--save-when", "label:stripes",
                 "--save-max", "100")
    assert result.exit_code == 0, result.output
    assert saved_files(frames) == ["stripes"] * FRAMES_PER_SCENE


def test_a_bad_rule_is_a_usage_error_naming_it(runtime_models, clip: Path, tmp_path: Path) -> None:
    result = run(runtime_models, "--camera", str(clip), "--save", str(tmp_path), "--save-when", "sure:0.5")
    assert result.exit_code == 2
    assert "Invalid value for '--save-when': " in result.stderr and "sure:0.5" in result.stderr


def test_a_save_folder_that_cannot_be_made_is_one_line_before_any_frame(runtime_models, clip: Path,
                                                                        tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run(runtime_models, "--camera", str(clip), "--json", "--save", str(blocker / "frames"),
                 "--save-when", "unsure:0.5")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip() == f"Error: {blocker / 'frames'}: cannot save frames there (Not a directory)"


# --- --serve: the live view of a real run, through the command line ---------------------------------

SERVE_START_S = 60
HTTP_TIMEOUT_S = 10


class ServedRun:
    """`edge-classify --camera ... --serve 127.0.0.1:0` in a subprocess; its address read from stderr."""

    def __init__(self, arguments: list[str], own_group: bool = False):
        # own_group: a process group of its own, which the test may signal as a terminal or systemd would.
        self.process = subprocess.Popen([sys.executable, "-m", "edge_runtime.cli", *arguments,
                                         "--serve", "127.0.0.1:0"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        start_new_session=own_group, preexec_fn=ctrl_c_as_in_a_terminal)
        self.stderr_lines: list[str] = []
        deadline = time.monotonic() + SERVE_START_S
        self.url = None
        while self.url is None and time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            self.stderr_lines.append(line.rstrip("\n"))
            if line.startswith("live view: "):
                self.url = line.split(": ", 1)[1].strip()
        if self.url is None:
            self.stop()
            raise AssertionError(f"no live view address; stderr: {self.stderr_lines}")

    def request(self, path: str, data: bytes | None = None, headers: dict | None = None):
        import urllib.error
        import urllib.request

        request = urllib.request.Request(self.url.rstrip("/") + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def wait_for(self, predicate, path: str = "/healthz", limit_s: float = SERVE_START_S) -> dict:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            status, body = self.request(path)
            if status == 200 and predicate(body):
                return body
            time.sleep(0.1)
        raise AssertionError(f"{path} never satisfied the test: last {body}")

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, rest = self.process.communicate(timeout=HTTP_TIMEOUT_S * 3)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.communicate()
        return self.process.returncode, "\n".join(self.stderr_lines) + "\n" + rest


@pytest.fixture
def served():
    runs: list[ServedRun] = []

    def start(*arguments: str, own_group: bool = False) -> ServedRun:
        runs.append(ServedRun(list(arguments), own_group))
        return runs[-1]

    yield start
    for served_run in runs:
        served_run.stop()


def test_served_run_answers_saves_the_pages_frame_and_classifies_uploads(runtime_models, clip: Path,
                                                                          tmp_path: Path, served) -> None:
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    from PIL import Image

    frames = tmp_path / "frames"
    log = tmp_path / "live.jsonl"
    run_ = served("--model", str(runtime_models.int8), "--camera", str(clip), "--loop", "--json", "-o", str(log),
                  "--save", str(frames), "-k", "2")
    run_.wait_for(lambda health: health["frames"] >= 3 and health["camera_delivering"])
    status, latest = run_.request("/api/latest")
    assert status == 200 and latest["label"] in ("circle", "stripes") and len(latest["top_k"]) == 2
    status, model = run_.request("/api/model")
    assert status == 200 and model["labels"] == list(CLASS_NAMES)
    status, saved = run_.request("/api/capture", json.dumps({"label": "my stripes"}).encode(),
                                 {"Content-Type": "application/json"})
    assert status == 200 and saved["label"] == "my stripes"
    assert run_.request("/api/model")[1]["capture_classes"] == ["my stripes"]  # offered on the next load
    with Image.open(frames / saved["file"]) as image:
        assert image.format == "JPEG" and image.size == (64, 64)
    circle = tmp_path / "circle.png"
    Image.fromarray(scene("circle")).save(circle)
    status, answer = run_.request("/api/classify", circle.read_bytes(), {"Content-Type": "image/png"})
    file_answer = json.loads(run(runtime_models, str(circle), "--json", "-k", "2").stdout)
    assert status == 200 and answer["label"] == "circle"
    assert answer["top_k"] == file_answer["top_k"]  # the same path as a file
    assert answer["path"] == "upload" and set(answer) == set(file_answer)
    assert {key: value for key, value in answer.items() if key not in ("path", "latency_ms")} == {
        key: value for key, value in file_answer.items() if key not in ("path", "latency_ms")}
    status, refused = run_.request("/api/classify", b"not an image", {"Content-Type": "image/png"})
    assert status == 400 and refused["error"] == "upload: not a recognised image file"
    code, stderr = run_.stop()
    assert code == 0, stderr
    classified = int(stderr.strip().splitlines()[-2].split()[0])  # "N frames in ...", then the saver's line
    assert len(log.read_text().splitlines()) == classified
    assert stderr.strip().splitlines()[-1] == f"saved 1 frame to {frames}"


def test_when_the_video_ends_the_view_says_so_and_stays_up(runtime_models, clip: Path, served) -> None:
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    run_ = served("--model", str(runtime_models.int8), "--camera", str(clip))
    health = run_.wait_for(lambda health: health["finished"] is not None)
    assert health["frames"] == 2 * FRAMES_PER_SCENE and not health["camera_delivering"]
    assert health["finished"].startswith(f"{2 * FRAMES_PER_SCENE} frames in ")
    assert "stopped by end of stream" in health["finished"]
    status, latest = run_.request("/api/latest")
    assert status == 200 and latest["frame"] == 2 * FRAMES_PER_SCENE and latest["label"] == "stripes"
    code, stderr = run_.stop()
    assert code == 0, stderr
    assert "the live view stays up until Ctrl-C" in stderr


@pytest.mark.parametrize("signal_number, sent_by", [(signal.SIGINT, "Ctrl-C in a terminal"),
                                                   (signal.SIGTERM, "systemd stopping the unit")])
def test_a_signal_to_every_process_ends_the_run_cleanly(runtime_models, clip: Path, served, signal_number,
                                                        sent_by) -> None:
    """The server runs in a second process, and both get the signal: the run still ends as by Ctrl-C,
    with no traceback from either, and no process is left behind."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    run_ = served("--model", str(runtime_models.int8), "--camera", str(clip), "--loop", own_group=True)
    run_.wait_for(lambda health: health["frames"] >= 3)
    group = os.getpgid(run_.process.pid)
    with open(f"/proc/{run_.process.pid}/task/{run_.process.pid}/children") as children:
        assert len(children.read().split()) == 1  # the live view's server process
    os.killpg(group, signal_number)
    run_.process.wait(TERM_WAIT_S)  # one signal only (stop() would send another)
    code, stderr = run_.stop()
    assert code == 0, stderr
    assert "stopped by Ctrl-C" in stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr
    deadline = time.monotonic() + TERM_WAIT_S
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"a process of the run outlived it after {sent_by}")


def test_serve_without_the_extra_says_which_to_install(runtime_models, clip: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    result = run(runtime_models, "--camera", str(clip), "--serve", "127.0.0.1:0")
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: --serve needs the [serve] extra: pip install 'edge-image-toolkit[serve]'"


def test_a_library_run_without_a_classifier_maker_classifies_uploads_on_an_interpreter_of_their_own(
        runtime_models, clip: Path, tmp_path: Path) -> None:
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    import _thread
    import threading
    import urllib.request

    from PIL import Image

    from edge_runtime.classify import Classifier
    from edge_runtime.live_run import LiveOptions, ServeOptions, run_live

    classifier = Classifier(runtime_models.int8)
    made: list[Classifier] = []
    original_init = Classifier.__init__

    def counting_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        made.append(self)

    circle = tmp_path / "circle.png"
    Image.fromarray(scene("circle")).save(circle)
    messages: list[str] = []
    answers: list[dict] = []

    def notify(message: str) -> None:
        messages.append(message)
        if message.startswith("live view: "):
            url = message.split(": ", 1)[1].rstrip("/")
            request = urllib.request.Request(url + "/api/classify", data=circle.read_bytes())
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                answers.append(json.loads(response.read()))
        if message.endswith("the live view stays up until Ctrl-C"):  # the video ended: press Ctrl-C
            threading.Timer(0.5, _thread.interrupt_main).start()

    options = LiveOptions(source=str(clip), max_frames=3, serve=ServeOptions("127.0.0.1", 0, None, 10.0),
                          output=str(tmp_path / "log.jsonl"))
    Classifier.__init__ = counting_init
    # interrupt_main does nothing where SIGINT is ignored (a test run started in the background).
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        outcome = run_live(classifier, options, notify)
    finally:
        Classifier.__init__ = original_init
        signal.signal(signal.SIGINT, previous_handler)
    assert outcome.summary.frames >= 3
    assert answers and answers[0]["label"] == "circle"
    assert len(made) == 1 and made[0] is not classifier  # the upload's own interpreter
