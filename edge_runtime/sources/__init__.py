"""Where the images to classify come from, and the live loop over camera frames.

- `files`: the files and folders named on the command line, expanded into image paths
  (`batch` and `workers` classify them);
- `camera`: frame sources behind a context manager (the Pi camera through picamera2; a USB
  camera, a video file or a stream through OpenCV), each imported only when opened;
- `live`: classifying camera frames with one Classifier, reporting as the answer changes.

Nothing is imported here: each module loads only what it needs.
"""
