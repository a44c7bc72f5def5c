"""Video files for the live tests: synthetic scenes written with OpenCV, as a camera would see them.

Imported by test modules (PYTEST_DONT_REWRITE: it asserts nothing of its own).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthetic import CLASS_NAMES, synthetic_arrays

FRAME_SCALE = 2  # video frames are 64x64: the runtime must resize them to the model's 32x32


def write_video(path: Path, scenes: list[np.ndarray], frames_per_scene: int, fps: float) -> Path:
    """An MJPG .avi with each RGB scene repeated `frames_per_scene` times, declaring `fps`."""
    import cv2

    height, width = scenes[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    for scene in scenes:
        for _ in range(frames_per_scene):
            writer.write(np.ascontiguousarray(scene[:, :, ::-1]))  # OpenCV writes BGR
    writer.release()
    return path


def upscale(image: np.ndarray, factor: int = FRAME_SCALE) -> np.ndarray:
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def scene(class_name: str, seed: int = 21) -> np.ndarray:
    """One synthetic image of `class_name`, upscaled as a camera frame."""
    images, labels = synthetic_arrays(1, seed=seed)
    return upscale(images[list(labels).index(CLASS_NAMES.index(class_name))])
