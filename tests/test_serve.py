"""The live view's server, run for real on loopback: routes, video, events, token, limits, abuse.

Each test starts `start_server` on 127.0.0.1 port 0 over a LiveHub fed by a thread of synthetic
frames (serve_fixtures) and talks to it with http.client and raw sockets; nothing is mocked.
"""

from __future__ import annotations

import errno
import io
import json
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the live view needs the [serve] extra (starlette)")
pytest.importorskip("uvicorn", reason="the live view needs the [serve] extra (uvicorn)")

from PIL import Image  # noqa: E402

from edge_runtime.errors import EdgeError  # noqa: E402
from edge_runtime.serve.hub import LiveHub  # noqa: E402
from edge_runtime.serve.server import (MISSING_EXTRA_MESSAGE, ServeError, bind_policy, is_loopback,  # noqa: E402
                                       parse_address, start_server)
from serve_fixtures import (LABELS, MODEL_FACTS, TOKEN, raw_exchange, read_parts, start_live,  # noqa: E402
                            status_for, wait_until)

pytest_plugins = ("serve_fixtures",)

BEARER = {"Authorization": f"Bearer {TOKEN}"}
MAX_SIDE_PX = 640
PAGE_IDS = ("label", "score", "fps", "latency", "frame", "video", "classes", "model", "source-state",
            "capture-label", "capture-new", "capture-button", "capture-result")
GET_ROUTES = ("/", "/static/app.js", "/static/style.css", "/api/latest", "/api/model", "/healthz")
STREAM_ROUTES = ("/video.mjpg", "/api/events")
POST_ROUTES = ("/api/classify", "/api/capture")
UPLOAD_CAP = 1000


def png_bytes(size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def guarded():
    """One token-protected live view for the token and path tests (module-scoped: many requests)."""
    live = start_live(token=TOKEN, capture=lambda label: {"label": label, "path": f"/saved/{label}/1.jpg"})
    wait_until(lambda: live.hub.version > 0, 5)
    yield live
    live.close()


def test_every_route_answers_with_its_content_and_headers(live_view) -> None:
    live = live_view()
    assert wait_until(lambda: live.hub.version > 2, 5)
    status, headers, page = live.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert headers["x-content-type-options"] == "nosniff"
    for element in PAGE_IDS:
        assert f'id="{element}"'.encode() in page
    assert live.request("GET", "/static/app.js")[1]["content-type"].startswith("text/javascript")
    assert live.request("GET", "/static/style.css")[1]["content-type"].startswith("text/css")

    status, headers, body = live.request("GET", "/api/latest")
    latest = json.loads(body)
    assert status == 200 and headers["cache-control"] == "no-store"
    assert latest["label"] == "cat" and latest["top_k"][1] == {"label": "dog", "score": 0.07}
    assert latest["frames"] >= latest["frame"] > 0
    assert json.loads(live.request("GET", "/api/model")[2]) == {**MODEL_FACTS, "labels": LABELS, "capture": False}
    health = live.health()
    assert health["camera_delivering"] is True and health["frames"] > 0 and health["fps"] > 10
    assert health["finished"] is None and health["video_viewers"] == 0

    status, _, body = live.request("POST", "/api/classify", body=png_bytes())
    assert (status, json.loads(body)) == (200, {"label": "cat", "score": 0.9, "size": [40, 30]})
    status, _, body = live.request("POST", "/api/classify", body=b"not an image at all")
    assert status == 400 and json.loads(body)["error"].startswith("upload: not an image")


def test_a_multipart_upload_is_classified_as_its_file(live_view) -> None:
    live = live_view(feed=False)
    form = (b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + png_bytes((12, 8)) + b"\r\n--XyZ--\r\n")
    status, _, body = live.request("POST", "/api/classify", body=form,
                                   headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert (status, json.loads(body)["size"]) == (200, [12, 8])
    status, _, body = live.request("POST", "/api/classify", body=b"\x00garbage--",
                                   headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert (status, json.loads(body)) == (400, {"error": "the multipart/form-data upload holds no file"})


def test_latest_is_503_before_the_first_frame_then_the_result(live_view) -> None:
    live = live_view(feed=False)
    status, _, body = live.request("GET", "/api/latest")
    assert (status, json.loads(body)) == (503, {"error": "no frame classified yet"})
    assert live.health()["camera_delivering"] is False
    frame, status = np.zeros((48, 64, 3), np.uint8), status_for(1)
    live.hub.publish(frame, status)
    assert live.hub.latest_frame is frame and live.hub.latest_status is status  # kept, not copied
    status, _, body = live.request("GET", "/api/latest")
    assert status == 200 and json.loads(body)["frame"] == 1


def test_video_parts_are_jpegs_at_most_serve_fps_and_640_px(live_view) -> None:
    serve_fps, seconds = 5, 2.0
    live = live_view(serve_fps=serve_fps)
    response = live.open_stream("/video.mjpg")
    assert response.status == 200
    assert response.getheader("Content-Type") == "multipart/x-mixed-replace; boundary=frame"
    assert response.getheader("Cache-Control") == "no-store"
    started = time.monotonic()
    parts = read_parts(response, seconds)
    elapsed = time.monotonic() - started
    response.close()
    # The first part comes at once, then one every 1/serve_fps s at most (the feed is 40 fps).
    assert serve_fps * seconds * 0.6 <= len(parts) <= serve_fps * elapsed + 1
    for part in parts:
        with Image.open(io.BytesIO(part)) as image:
            assert image.format == "JPEG" and max(image.size) <= MAX_SIDE_PX
            assert image.size == (480, 360)  # 960x720 reduced by 2


def test_jpeg_is_encoded_only_while_watched_and_once_per_frame_for_all(live_view) -> None:
    live = live_view(serve_fps=5)
    jpeg = live.app.state.view.jpeg
    assert wait_until(lambda: live.hub.version > 10, 5)
    for path in GET_ROUTES:
        live.request("GET", path)
    head = raw_exchange(live.port, b"HEAD /video.mjpg HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"multipart/x-mixed-replace" in head
    assert jpeg.encoded == 0
    viewers = [live.open_stream("/video.mjpg") for _ in range(3)]
    counts: list[int] = []
    threads = [threading.Thread(target=lambda r=r: counts.append(len(read_parts(r, 1.5)))) for r in viewers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    for response in viewers:
        response.close()
    # Three viewers, but one encode per frame sent (plus at most one a viewer skipped).
    assert min(counts) >= 4 and jpeg.encoded <= max(counts) + 2
    assert wait_until(lambda: live.health()["video_viewers"] == 0, 5)
    encoded = jpeg.encoded
    time.sleep(0.5)
    assert jpeg.encoded == encoded


def test_a_viewer_that_stops_reading_is_dropped_without_stalling_another(live_view) -> None:
    live = live_view(serve_fps=20, send_timeout_s=1.0)
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills fast; never read below
    stuck.settimeout(10)
    stuck.connect(("127.0.0.1", live.port))
    stuck.sendall(b"GET /video.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        reader = live.open_stream("/video.mjpg")
        assert wait_until(lambda: live.health()["video_viewers"] == 2, 5)
        arrivals: list[float] = []

        def keep_reading() -> None:
            deadline = time.monotonic() + 12
            while time.monotonic() < deadline and not dropped.is_set():
                arrivals.extend(time.monotonic() for _ in read_parts(reader, 0.2))

        dropped = threading.Event()
        thread = threading.Thread(target=keep_reading)
        thread.start()
        was_dropped = wait_until(lambda: live.health()["video_viewers"] == 1, 12, step_s=0.2)
        time.sleep(0.5)
        dropped.set()
        thread.join(15)
        reader.close()
        assert was_dropped
        # The reader got frames the whole time: never a gap near the 1 s send timeout.
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        assert len(arrivals) > 20 and max(gaps) < 0.8
        # The dropped connection ends: what was buffered for it, then EOF.
        received = 0
        while chunk := stuck.recv(1 << 20):
            received += len(chunk)
        assert received < 20_000_000
    finally:
        stuck.close()


def test_events_give_results_then_the_end_after_finish(live_view) -> None:
    live = live_view(serve_fps=10)
    response = live.open_stream("/api/events")
    assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream; charset=utf-8"
    text, deadline = "", time.monotonic() + 5
    while text.count("\ndata: ") < 2 and time.monotonic() < deadline:
        text += response.read1(65536).decode()
    assert text.startswith("retry: 3000\n\ndata: ")
    first = json.loads(text.split("data: ")[1].split("\n")[0])
    assert first["label"] == "cat" and first["top_k"][0] == {"label": "cat", "score": 0.9}
    live.feeder.stop()
    live.hub.finish("end of video pets.mp4")
    rest = response.read().decode()  # the stream ends by itself
    assert rest.endswith('event: end\ndata: {"message":"end of video pets.mp4","error":null}\n\n')
    assert live.health()["finished"] == "end of video pets.mp4"
    assert live.request("GET", "/api/latest")[0] == 200  # the API keeps the last result
    video = live.open_stream("/video.mjpg")
    assert video.read().endswith(b"--frame--\r\n")  # the last frame, then the closing boundary


def test_stopping_the_server_ends_open_streams_at_once(live_view) -> None:
    live = live_view()
    video, events = live.open_stream("/video.mjpg"), live.open_stream("/api/events")
    assert read_parts(video, 0.3) and events.read1(65536).startswith(b"retry: ")
    started = time.monotonic()
    live.server.stop(5)
    assert time.monotonic() - started < 1.0  # the streams end at once, not after the graceful timeout
    assert video.read().endswith(b"--frame--\r\n")
    assert events.read().endswith(b'event: end\ndata: {"message":"the live view stopped","error":null}\n\n')


@pytest.mark.parametrize("method,path", [("GET", p) for p in GET_ROUTES + STREAM_ROUTES + ("/nope",)]
                         + [("POST", p) for p in POST_ROUTES])
def test_every_route_needs_the_token(guarded, method: str, path: str) -> None:
    for headers, query in [({}, ""), ({"Authorization": "Bearer wrong"}, ""), ({}, "?token=wrong"),
                           ({"Authorization": TOKEN}, ""), ({}, f"?token={TOKEN}x")]:
        body = b"{}" if method == "POST" else None
        status, response_headers, body = guarded.request(method, path + query, body, headers)
        assert status == 401, (headers, query)
        assert response_headers["www-authenticate"] == "Bearer" and "needs its token" in json.loads(body)["error"]
    if path in STREAM_ROUTES:
        for headers, query in [(BEARER, ""), ({}, f"?token={TOKEN}")]:
            response = guarded.open_stream(path + query, headers)
            assert response.status == 200
            response.close()
    elif path in GET_ROUTES:
        assert guarded.request(method, path, headers=BEARER)[0] == 200
        assert guarded.request(method, f"{path}?token={TOKEN}")[0] == 200


def test_the_page_links_its_files_with_the_token(guarded) -> None:
    page = guarded.request("GET", f"/?token={TOKEN}")[2].decode()
    assert f'src="/static/app.js?token={TOKEN}"' in page and f'href="/static/style.css?token={TOKEN}"' in page


@pytest.mark.parametrize("path", ["/static/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/static/app.js/..",
                                  "/static/%2e%2e/app.py", "/static/index.html", "/static//app.js",
                                  "/static/app.js%00", "/static/", "/static/APP.JS"])
def test_path_traversal_and_unlisted_files_are_404(guarded, path: str) -> None:
    answer = raw_exchange(guarded.port, f"GET {path}?token={TOKEN} HTTP/1.1\r\nHost: x\r\n"
                                        "Connection: close\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 404 ") and answer.endswith(b'{"error":"not found"}')


def test_an_oversize_upload_is_413_with_or_without_content_length(live_view) -> None:
    live = live_view(feed=False, max_upload_bytes=UPLOAD_CAP)
    declared = raw_exchange(live.port, f"POST /api/classify HTTP/1.1\r\nHost: x\r\nContent-Length: {UPLOAD_CAP + 1}"
                                       "\r\nConnection: close\r\n\r\n".encode() + b"x" * 10)
    assert declared.startswith(b"HTTP/1.1 413 ") and b"the limit is 1000" in declared
    chunk = b"x" * 600
    chunked = raw_exchange(live.port, b"POST /api/classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                      b"Connection: close\r\n\r\n" + (b"258\r\n" + chunk + b"\r\n") * 2 + b"0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 413 ") and b"over the limit of 1000 bytes" in chunked
    status, _, _ = live.request("POST", "/api/classify", body=png_bytes((4, 4)))
    assert status == 200


def test_garbage_and_half_closed_connections_leave_it_serving(live_view) -> None:
    live = live_view()
    assert raw_exchange(live.port, b"\x00\xff\xfeGARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw_exchange(live.port, b"GET /api/lat", shut_write=True, timeout_s=3) == b""
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    assert raw_exchange(live.port, big).startswith(b"HTTP/1.1 ")
    raw_exchange(live.port, b"POST /api/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nshort",
                 shut_write=True, timeout_s=3)
    with socket.create_connection(("127.0.0.1", live.port)) as half:
        half.sendall(b"GET /video.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
        half.shutdown(socket.SHUT_RDWR)
    assert live.request("POST", "/api/capture", body=b"\xff{", headers={"Content-Type": "application/json"})[0] == 409
    assert live.health()["camera_delivering"] is True
    assert wait_until(lambda: live.health()["video_viewers"] == 0, 5)


def test_capture_answers_409_when_off_and_maps_errors_when_on(live_view) -> None:
    assert live_view(feed=False).request("POST", "/api/capture", b'{"label": "cat"}')[0] == 409

    def capture(label: str) -> dict:
        if label == "full":
            raise OSError(errno.ENOSPC, "No space left on device")
        if "/" in label:
            raise EdgeError(f"cannot save under {label!r}: a class name cannot hold '/'")
        return {"label": label, "path": f"/saved/{label}/20250101T000000.jpg"}

    live = live_view(feed=False, capture=capture)
    assert json.loads(live.request("GET", "/api/model")[2])["capture"] is True
    status, _, body = live.request("POST", "/api/capture", b'{"label": " fox "}')
    assert (status, json.loads(body)) == (200, {"label": "fox", "path": "/saved/fox/20250101T000000.jpg"})
    status, _, body = live.request("POST", "/api/capture", b'{"label": "a/b"}')
    assert (status, json.loads(body)["error"]) == (400, "cannot save under 'a/b': a class name cannot hold '/'")
    status, _, body = live.request("POST", "/api/capture", b'{"label": "full"}')
    assert (status, json.loads(body)["error"]) == (507, "saving the frame failed: the disk is full")
    for bad in (b"", b"[1]", b'{"label": 3}', b'{"label": ""}', b"not json"):
        assert live.request("POST", "/api/capture", bad)[0] == 400


def test_health_counts_frames_and_says_when_the_camera_stops_delivering() -> None:
    now = [100.0]
    hub = LiveHub(MODEL_FACTS, LABELS, clock=lambda: now[0])
    assert hub.health()["camera_delivering"] is False and hub.health()["frames"] == 0
    for number in range(1, 11):
        hub.publish(np.zeros((4, 4, 3), np.uint8), status_for(number))
        now[0] += 0.1
    health = hub.health()
    assert (health["frames"], health["fps"], health["camera_delivering"], health["uptime_s"]) == (10, 9.0, True, 1.0)
    now[0] += 2.5  # no frame for 2.6 s: stalled
    assert hub.health()["camera_delivering"] is False and hub.health()["fps"] < 3
    now[0] -= 2.5
    hub.finish("end of video pets.mp4", error=None)
    assert hub.health()["camera_delivering"] is False and hub.health()["finished"] == "end of video pets.mp4"


def test_a_coalesced_result_counts_its_frames_and_no_frame_keeps_the_last_one() -> None:
    """What the server's own process publishes: the latest of several results, a frame only now and then."""
    now = [100.0]
    hub = LiveHub(MODEL_FACTS, LABELS, clock=lambda: now[0])
    first = np.zeros((4, 4, 3), np.uint8)
    hub.publish(first, status_for(1))
    for number in range(5, 41, 4):  # every 40 ms, the latest of four frames
        now[0] += 0.04
        hub.publish(None, status_for(number), frames=4)
    snapshot = hub.snapshot()
    assert (snapshot.version, snapshot.status.frame, snapshot.frame_version) == (37, 37, 1)
    assert snapshot.frame is first
    assert hub.health()["frames"] == 37 and hub.health()["fps"] == pytest.approx(100.0)
    second = np.ones((4, 4, 3), np.uint8)
    hub.publish(second, status_for(41), frames=4)
    assert hub.snapshot().frame is second and hub.snapshot().frame_version == 41


def test_the_video_encodes_a_frame_once_however_many_results_follow_it() -> None:
    import asyncio

    from edge_runtime.serve.jpeg import LatestJpeg

    hub = LiveHub(MODEL_FACTS, LABELS)
    jpeg = LatestJpeg(hub, max_fps=1000.0)
    hub.publish(np.zeros((8, 8, 3), np.uint8), status_for(1))

    async def watch() -> list:
        seen = [await jpeg.newer_than(0)]
        hub.publish(None, status_for(2))  # a result without a new picture
        seen.append(await jpeg.newer_than(seen[0][0]))
        hub.publish(np.ones((8, 8, 3), np.uint8), status_for(3))
        seen.append(await jpeg.newer_than(seen[0][0]))
        return seen

    first, unchanged, changed = asyncio.run(watch())
    assert first[0] == 1 and unchanged is None and changed[0] == 3
    assert jpeg.encoded == 2 and first[1] != changed[1]


def test_addresses_and_the_bind_policy() -> None:
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad in ("http", "1:2:3", "host:70000", "host:"):
        with pytest.raises(ServeError, match="cannot read the address"):
            parse_address(bad)
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "192.168.1.5", "pi.local")] == [
        True, True, True, False, False, False]
    assert bind_policy("127.0.0.1", None, 8080) == (None, None)
    token, warning = bind_policy("0.0.0.0", None, 8080)
    assert token is not None and len(token) >= 20
    assert warning == ("the live view on 0.0.0.0:8080 is reachable from the network and every request needs the "
                       f"token; open http://<this device's address>:8080/?token={token}")
    token, warning = bind_policy("192.168.1.5", "mine", 8080)
    assert token == "mine" and "http://192.168.1.5:8080/?token=<your --token>" in warning and "mine" not in warning


def test_an_address_in_use_is_a_one_line_error(live_view) -> None:
    live = live_view(feed=False)
    with pytest.raises(ServeError) as raised:
        start_server(live.app, "127.0.0.1", live.port)
    message = str(raised.value)
    assert message.startswith(f"cannot serve on 127.0.0.1:{live.port}: the address is in use") and "\n" not in message
    with pytest.raises(ServeError, match="not one of this machine's"):
        start_server(live.app, "192.0.2.1", 0)
    assert live.health()["frames"] == 0  # the first server still answers


def test_without_the_extra_it_says_which_to_install() -> None:
    code = ("import sys; sys.modules['uvicorn'] = None\n"
            "from edge_runtime.errors import MissingPackageError\n"
            "from edge_runtime.serve.hub import LiveHub\n"
            "from edge_runtime.serve.app import build_app\n"
            "try:\n    build_app(LiveHub({}, []), token=None, serve_fps=5, classify_upload=len, capture=None)\n"
            "except MissingPackageError as error:\n    print(error)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout == MISSING_EXTRA_MESSAGE + "\n" and result.returncode == 0, result.stderr
