"""The live view's server in a process of its own (edge_runtime/serve/process.py), driven for real.

A `ViewProcess` starts the server's Python on a free loopback port; the test publishes results and
frames as the classification loop would, reads the API and the video over HTTP, and answers the
server's requests with a handler of its own. Everything is stopped in finalizers.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import signal
import time
from typing import Any, Callable

import numpy as np
import pytest

from edge_runtime.errors import EdgeError
from serve_fixtures import FRAME_SHAPE, LABELS, MODEL_FACTS, status_for

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from edge_runtime.serve.process import ViewConfig, ViewProcess  # noqa: E402

HTTP_TIMEOUT_S = 10.0
WAIT_LIMIT_S = 20.0


def wait_until(predicate: Callable[[], Any], limit_s: float = WAIT_LIMIT_S) -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def get(port: int, path: str, body: bytes | None = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT_S)
    try:
        connection.request("POST" if body is not None else "GET", path, body=body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


class Requests:
    """The classifying process's answers, recorded: what the server asked, and what to answer."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, Any]] = []
        self.failure: Exception | None = None

    def __call__(self, kind: str, argument: Any) -> Any:
        self.asked.append((kind, argument))
        if self.failure is not None:
            raise self.failure
        if kind == "capture":
            return {"label": argument, "file": f"{argument}/frame.jpg"}
        if kind == "capture_classes":
            return ["feeder"]
        return {"label": "cat", "score": 0.9, "bytes": len(argument)}


@pytest.fixture
def view():
    started: list[ViewProcess] = []

    def start(capture: bool = True) -> tuple[ViewProcess, Requests]:
        requests = Requests()
        process = ViewProcess(ViewConfig("127.0.0.1", 0, None, 10.0, MODEL_FACTS, LABELS, capture=capture),
                              requests)
        process.start()
        started.append(process)
        return process, requests

    yield start
    for process in started:
        process.stop()


def test_results_reach_the_server_process_and_every_frame_is_counted(view) -> None:
    process, _ = view()
    assert process.port and process._process.pid != os.getpid()
    for number in range(1, 301):
        process.publish(None, status_for(number))
    latest = wait_until(lambda: (lambda answer: answer[1] if answer[1].get("frames") == 300 else None)(
        get(process.port, "/api/latest")))
    # Results are sent coalesced, but the count is of every classified frame, and the result is the last one.
    assert latest["frames"] == 300 and latest["frame"] == 300 and latest["label"] == "cat"
    status, model = get(process.port, "/api/model")
    assert status == 200 and model["labels"] == LABELS and model["model"] == MODEL_FACTS["model"]
    assert model["capture_classes"] == ["feeder"]


def test_frames_are_sent_only_while_someone_watches_and_the_video_shows_them(view) -> None:
    import threading
    from io import BytesIO

    from PIL import Image

    process, _ = view()
    stopping = threading.Event()

    def classify(brightness: int, first: int) -> None:  # the classification loop, bounded
        for number in range(first, first + int(WAIT_LIMIT_S / 0.02)):
            if stopping.is_set():
                return
            process.publish(np.full(FRAME_SHAPE, brightness, np.uint8), status_for(number))
            time.sleep(0.02)

    classify_unwatched = threading.Thread(target=classify, args=(200, 1), daemon=True)
    classify_unwatched.start()
    time.sleep(0.5)
    stopping.set()
    classify_unwatched.join()
    assert process._watched is False and get(process.port, "/healthz")[1]["video_viewers"] == 0
    stopping.clear()
    connection = http.client.HTTPConnection("127.0.0.1", process.port, timeout=HTTP_TIMEOUT_S)
    watched = threading.Thread(target=classify, args=(90, 1000), daemon=True)
    try:
        connection.request("GET", "/video.mjpg")
        response = connection.getresponse()
        assert response.status == 200
        watched.start()
        data = b""
        deadline = time.monotonic() + WAIT_LIMIT_S
        while b"\xff\xd9" not in data and time.monotonic() < deadline:  # a whole JPEG
            data += response.fp.read1(65536)
        assert process._watched is True
    finally:
        stopping.set()
        connection.close()
        watched.join()
    jpeg = data[data.index(b"\xff\xd8"):data.index(b"\xff\xd9") + 2]
    picture = Image.open(BytesIO(jpeg))
    assert max(picture.size) <= 640  # downscaled from 960x720
    # A frame sent once someone watched (brightness 90); the unwatched ones (200) never crossed.
    assert abs(float(np.asarray(picture.convert("L")).mean()) - 90) <= 3


def test_uploads_and_saves_are_answered_by_the_classifying_process(view) -> None:
    process, requests = view()
    process.publish(None, status_for(1))
    status, answer = get(process.port, "/api/classify", body=b"\x89PNG fake")
    assert (status, answer) == (200, {"label": "cat", "score": 0.9, "bytes": 9})
    status, answer = get(process.port, "/api/capture", body=json.dumps({"label": "feeder"}).encode())
    assert (status, answer) == (200, {"label": "feeder", "file": "feeder/frame.jpg"})
    assert requests.asked[0] == ("classify", b"\x89PNG fake") and ("capture", "feeder") in requests.asked

    requests.failure = EdgeError("upload: not an image")
    assert get(process.port, "/api/classify", body=b"junk") == (400, {"error": "upload: not an image"})
    full = OSError(errno.ENOSPC, "No space left on device")
    requests.failure = full
    status, answer = get(process.port, "/api/capture", body=json.dumps({"label": "feeder"}).encode())
    assert status == 507 and "No space left on device" in answer["error"]
    requests.failure = ZeroDivisionError("a bug")
    status, answer = get(process.port, "/api/capture", body=json.dumps({"label": "feeder"}).encode())
    assert status == 500 and "failed unexpectedly" in answer["error"]


def test_the_end_of_the_run_reaches_the_page_and_stop_ends_the_process(view) -> None:
    process, _ = view()
    process.publish(np.zeros(FRAME_SHAPE, np.uint8), status_for(1))
    process.finish("1 frames in 0.1 s; the video ended")
    assert wait_until(lambda: get(process.port, "/healthz")[1]["finished"] == "1 frames in 0.1 s; the video ended")
    child = process._process
    process.stop()
    assert child.poll() is not None


def test_the_server_process_ends_when_the_classifying_process_is_gone(view) -> None:
    process, _ = view()
    child = process._process
    for end in (process._feed, process._control, process._watching):  # what dying does to the pipes
        end.close()
    assert wait_until(lambda: child.poll() is not None, 10)


def test_a_server_process_that_dies_does_not_stop_classification(view, caplog) -> None:
    process, _ = view()
    os.kill(process._process.pid, signal.SIGKILL)
    process._process.wait(10)
    for number in range(1, 50):  # the classification loop goes on publishing; nothing raises
        process.publish(np.zeros((8, 8, 3), np.uint8), status_for(number))
        time.sleep(0.005)
    assert wait_until(lambda: "server process has ended" in caplog.text, 5)


def test_an_address_in_use_is_one_line(view) -> None:
    import socket

    from edge_runtime.serve.server import ServeError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        process = ViewProcess(ViewConfig("127.0.0.1", port, None, 10.0, MODEL_FACTS, LABELS, capture=False),
                              Requests())
        with pytest.raises(ServeError, match=rf"^cannot serve on 127.0.0.1:{port}: the address is in use"):
            process.start()
        assert process._process.poll() is not None


def test_no_frame_is_kept_unless_the_video_is_due_one_or_a_save_waits(view) -> None:
    """Holding each frame until the next one cost a fifth of the frame rate: frames are let go at once."""
    import threading
    import weakref

    process, _ = view()
    frame = np.zeros((8, 8, 3), np.uint8)
    gone = weakref.ref(frame)
    process.publish(frame, status_for(1))
    del frame
    assert gone() is None  # nobody watches, no save waits: not kept

    taken: list = []
    waiter = threading.Thread(target=lambda: taken.append(process.next_frame(WAIT_LIMIT_S)))
    waiter.start()
    wait_until(lambda: process._capture_waiting == 1, 5)
    wanted = np.ones((8, 8, 3), np.uint8)
    process.publish(wanted, status_for(2))
    waiter.join(WAIT_LIMIT_S)
    assert taken[0][0] is wanted and taken[0][1].frame == 2  # the frame after the request, with its result
    process.finish("2 frames in 0.1 s")
    assert process.next_frame(WAIT_LIMIT_S) is None  # the source has ended: nothing to wait for
