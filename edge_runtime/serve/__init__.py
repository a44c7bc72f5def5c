"""The live view of `edge-classify --camera --serve`: a page with the camera's video and the model's
answers, a JSON API, and saving frames for the next training.

`hub` holds the latest frame and result between the classification thread and the server; `jpeg`
encodes the video's frames; `streams` are the MJPEG video and the result events; `security` the
token gate; `app` the Starlette routes; `server` the address, the token policy and uvicorn in a
thread; `process` runs all that in a process of its own, fed by the classifying one; `static/` the
page. Nothing is imported here: `edge-classify photo.jpg` must not pay for it.
"""
