"""MediaPipe's resize, to the pixel: OpenCV's fixed-point bilinear warp of 8-bit images, in numpy.

MediaPipe's ImageClassifier warps the whole image onto its input tensor with OpenCV's
warpPerspective (INTER_LINEAR, BORDER_REPLICATE), which on 8-bit images rounds source coordinates
to 1/32 pixel and blends the four neighbours in integers. `preprocess` resizes models from
elsewhere with `fixed_point_bilinear` (the resampling `preprocess.FIXED_POINT_BILINEAR`), so that
edge-classify and MediaPipe see the same pixels (tests/test_mediapipe_parity.py).
"""

from __future__ import annotations

import numpy as np

# Source coordinates are rounded to 1/32 pixel (OpenCV's INTER_BITS) ...
SUBPIXEL_BITS = 5
SUBPIXEL_STEPS = 1 << SUBPIXEL_BITS
# ... and the two axes' weights, each in 32nds, multiply to 1/1024ths: the sum is rounded off by
# adding half of that and shifting it away.
WEIGHT_BITS = 2 * SUBPIXEL_BITS
WEIGHT_ROUNDING = 1 << (WEIGHT_BITS - 1)
# OpenCV maps the destination in blocks of about this many pixels, 16 rows high; the first column of
# each block is mapped on its own, which decides how a coordinate exactly between two 1/32 steps rounds.
WARP_BLOCK_PIXELS = 1024
WARP_BLOCK_ROWS = 16


def _warp_coordinates(source_height: int, source_width: int, height: int,
                      width: int) -> tuple[np.ndarray, np.ndarray]:
    """Each destination row's and column's source coordinate in 1/32 pixel, as OpenCV computes it.

    MediaPipe maps the image's corners onto the tensor's: a matrix diag(width / source_width,
    height / source_height, 1), which OpenCV's warpPerspective inverts by cofactors over the
    determinant and then applies to each destination pixel in double precision, block by block,
    before rounding to the nearest 1/32 (half to even). Each step is repeated here in float64 so
    that the rare coordinate exactly between two steps rounds the same way.
    """
    scale_x, scale_y = width / source_width, height / source_height
    determinant = scale_x * scale_y
    inverse_determinant = 1.0 / determinant
    step_x, step_y = scale_y * inverse_determinant, scale_x * inverse_determinant  # source pixels per pixel
    steps_per_unit = SUBPIXEL_STEPS / (determinant * inverse_determinant)  # 32, or one ulp off it
    block_rows = min(WARP_BLOCK_ROWS, height)
    block_width = min(WARP_BLOCK_PIXELS // block_rows, width)
    columns = np.arange(width)
    block_start = (columns // block_width * block_width).astype(np.float64)
    in_block = (columns % block_width).astype(np.float64)
    x = np.rint((step_x * block_start + step_x * in_block) * steps_per_unit).astype(np.int64)
    y = np.rint(step_y * np.arange(height, dtype=np.float64) * steps_per_unit).astype(np.int64)
    return y, x


def _neighbours(coordinates: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two source pixels around each 1/32-pixel coordinate (the edge repeated), and the 32nds of the second."""
    first = np.clip(coordinates >> SUBPIXEL_BITS, 0, size - 1)
    second = np.minimum(first + 1, size - 1)
    fraction = (coordinates & (SUBPIXEL_STEPS - 1)).astype(np.uint16)
    return first, second, fraction


def fixed_point_bilinear(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 pixels (rows, columns, channels) to height x width exactly as MediaPipe does.

    MediaPipe's ImageClassifier warps the whole image onto its input tensor with OpenCV's
    fixed-point bilinear interpolation: destination pixel x samples the source at
    x * source_width / width (corners aligned, no half-pixel offset, no antialiasing), rounded to
    1/32 pixel; its four neighbours are weighted in 32nds per axis, summed in integers and rounded
    (OpenCV's warpPerspective, INTER_LINEAR, BORDER_REPLICATE, on 8-bit images). Bit-identical to
    MediaPipe 1.2.3's input pixels (see tests/test_mediapipe_parity.py); OpenCV's newer warps,
    which interpolate in float, differ from it by a few codes.
    """
    source_height, source_width, channels = pixels.shape
    if (source_height, source_width) == (height, width):
        return np.ascontiguousarray(pixels, dtype=np.uint8)
    y, x = _warp_coordinates(source_height, source_width, height, width)
    top, bottom, down = _neighbours(y, source_height)
    left, right, across = _neighbours(x, source_width)
    # One gather per neighbour, of whole pixels, by their index in the flattened image.
    flat = pixels.reshape(-1, channels)
    top, bottom = top[:, None] * source_width, bottom[:, None] * source_width
    across = across[:, None]
    stay = SUBPIXEL_STEPS - across
    # A blend of two pixels along a row fits 16 bits (at most 255 * 32); of two rows, 32 bits.
    upper = flat.take(top + left, axis=0) * stay + flat.take(top + right, axis=0) * across
    lower = flat.take(bottom + left, axis=0) * stay + flat.take(bottom + right, axis=0) * across
    down = down.astype(np.uint32)[:, None, None]
    blended = upper * (SUBPIXEL_STEPS - down)
    blended += lower * down
    blended += WEIGHT_ROUNDING
    blended >>= WEIGHT_BITS
    return blended.astype(np.uint8)
