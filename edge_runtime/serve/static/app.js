// The live view's page: the video from /video.mjpg, the answers from /api/events drawn as HTML,
// the model from /api/model, and saving the current frame through /api/capture.
// The token comes from this page's own URL (?token=...): fetch sends it as a Bearer header; the
// <img> and the EventSource cannot set headers, so their URLs carry it.
"use strict";

(function () {
  const RETRY_VIDEO_MS = 3000;
  const HEALTH_EVERY_MS = 5000;
  const MAX_LABELS_SHOWN = 30;

  const token = new URLSearchParams(window.location.search).get("token");
  const byId = (id) => document.getElementById(id);
  let ended = false;

  function withToken(path) {
    return token ? `${path}?token=${encodeURIComponent(token)}` : path;
  }

  async function api(path, options = {}) {
    const headers = Object.assign({}, options.headers || {});
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = { error: `${response.status} ${response.statusText}` };
    }
    return { ok: response.ok, status: response.status, body };
  }

  function setState(text, kind) {
    const state = byId("source-state");
    state.textContent = text;
    state.className = `state ${kind || ""}`;
  }

  function number(value, digits) {
    return typeof value === "number" ? value.toFixed(digits) : "–";
  }

  function drawClasses(classes) {
    const items = classes.map((item) => {
      const row = document.createElement("li");
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = item.label;
      name.title = item.label;
      const track = document.createElement("span");
      track.className = "track";
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.width = `${Math.max(0, Math.min(1, item.score || 0)) * 100}%`;
      track.appendChild(fill);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = number(item.score, 2);
      row.append(name, track, value);
      return row;
    });
    byId("classes").replaceChildren(...items);
  }

  function showResult(result) {
    const label = byId("label");
    label.textContent = result.label;
    label.classList.toggle("uncertain", Boolean(result.uncertain));
    byId("score").textContent = number(result.score, 2);
    byId("fps").textContent = number(result.fps, 1);
    byId("latency").textContent = number(result.latency_ms, 1);
    byId("frame").textContent = String(result.frame);
    drawClasses(result.top_k || [{ label: result.label, score: result.score }]);
  }

  function showEnd(end) {
    ended = true;
    const why = end.error ? `${end.message} (${end.error})` : end.message;
    setState(`ended: ${why}`, "ended");
  }

  function startEvents() {
    const events = new EventSource(withToken("/api/events"));
    events.onopen = () => { if (!ended) setState("live", "live"); };
    events.onmessage = (message) => showResult(JSON.parse(message.data));
    events.addEventListener("end", (message) => {
      showEnd(JSON.parse(message.data));
      events.close(); // or the browser would reconnect to a source that has ended
    });
    events.onerror = () => { if (!ended) setState("reconnecting…", ""); };
  }

  function startVideo() {
    const video = byId("video");
    video.onerror = () => {
      if (!ended) window.setTimeout(() => { video.src = withToken("/video.mjpg"); }, RETRY_VIDEO_MS);
    };
    video.src = withToken("/video.mjpg");
  }

  async function checkHealth() {
    const { ok, body } = await api("/healthz").catch(() => ({ ok: false, body: {} }));
    if (!ok || ended) return;
    if (body.finished) {
      showEnd({ message: body.finished, error: body.error });
    } else if (!body.camera_delivering) {
      setState("waiting for the camera…", "");
    } else {
      setState("live", "live");
    }
  }

  function fillCaptureLabels(labels) {
    const select = byId("capture-label");
    const known = new Set(Array.from(select.options, (option) => option.value));
    for (const label of labels) {
      if (known.has(label)) continue;
      known.add(label);
      const option = document.createElement("option");
      option.value = label;
      option.textContent = label;
      select.appendChild(option);
    }
  }

  function showModel(model) {
    const box = byId("model");
    const path = String(model.model || "");
    const name = (model.info && model.info.name) || path.split("/").pop() || "model";
    const title = document.createElement("div");
    title.textContent = `${name} · ${model.labels.length} classes${model.backend ? ` · ${model.backend}` : ""}`;
    const labels = document.createElement("div");
    labels.className = "labels";
    const shown = model.labels.slice(0, MAX_LABELS_SHOWN).join(" · ");
    labels.textContent = model.labels.length > MAX_LABELS_SHOWN ? `${shown} · …` : shown;
    box.replaceChildren(title, labels);

    fillCaptureLabels(model.labels.concat(model.capture_classes || []));
    const button = byId("capture-button");
    button.disabled = !model.capture;
    if (!model.capture) {
      byId("capture-label").disabled = true;
      byId("capture-new").disabled = true;
      byId("capture-result").textContent =
        "Saving frames is off: start edge-classify with --save DIR to save frames from here.";
    }
  }

  async function saveFrame() {
    const typed = byId("capture-new").value.trim();
    const label = typed || byId("capture-label").value;
    const result = byId("capture-result");
    if (!label) {
      result.textContent = "Choose a class or type a new one.";
      return;
    }
    const button = byId("capture-button");
    button.disabled = true;
    result.classList.remove("error");
    result.textContent = "saving…";
    try {
      const { ok, body } = await api("/api/capture", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ label }),
      });
      if (ok) {
        result.textContent = `Saved as ${label}: ${body.path || body.file || JSON.stringify(body)}`;
        fillCaptureLabels([label]);
        byId("capture-label").value = label;
        byId("capture-new").value = "";
      } else {
        result.classList.add("error");
        result.textContent = body.error || "not saved";
      }
    } catch (error) {
      result.classList.add("error");
      result.textContent = `not saved: ${error}`;
    } finally {
      button.disabled = false;
    }
  }

  async function start() {
    byId("capture-button").addEventListener("click", saveFrame);
    // After the load event: an endless MJPEG response would otherwise keep the page "loading"
    // forever (a spinner in the tab, and browser automation that waits for the load).
    if (document.readyState === "complete") {
      startVideo();
    } else {
      window.addEventListener("load", startVideo, { once: true });
    }
    startEvents();
    const { ok, body } = await api("/api/model").catch((error) => ({ ok: false, body: { error: String(error) } }));
    if (ok) {
      showModel(body);
    } else {
      byId("model").textContent = body.error || "the model's facts are not available";
    }
    checkHealth();
    window.setInterval(checkHealth, HEALTH_EVERY_MS);
  }

  start();
})();
