"""The one definition of image preprocessing, shared by training, calibration, the report and the device.

An image of any size and Pillow mode becomes a uint8 RGB array of the model's input size:
EXIF orientation applied, first frame of animations, alpha composited on a fixed background,
16-bit and CMYK brought to 8-bit RGB, then centre-cropped to the input's aspect ratio and resized.
Pixels become model inputs by `scale_pixels` (x / 255) or, for quantized models, by the input
tensor's own scale and zero point (see `classify.py`).

Our own models are resized with Pillow's filters, as in training. Models from elsewhere are
resized by `fixed_point_resize.fixed_point_bilinear`, the resize MediaPipe's ImageClassifier
applies (see `model_file/conventions.py`), so the two runtimes see the same pixels.
"""

from __future__ import annotations

import dataclasses
import io
import os
import stat
from typing import IO, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageError

# An image that declares more pixels than this is refused before it is decoded: a 40000x40000 PNG
# would otherwise allocate gigabytes. 100 MP is above any phone or DSLR photo a user would classify.
MAX_IMAGE_PIXELS = 100_000_000
# (Pillow's own decompression-bomb guard is global state, so we check our own limit and keep
# Pillow's as a second line of defence rather than changing it.)
EXIF_ORIENTATION_TAG = 0x0112
NORMAL_ORIENTATION = 1
PIXEL_SCALE = 255.0
# JPEG decoding can scale down by 1/2, 1/4 or 1/8 for free; ask for at least this many times the
# input size so the final resize still has real detail to average.
JPEG_DRAFT_OVERSAMPLING = 4
# JPEG files up to this size (a dataset's thumbnails, not photos) are read whole in one call and
# opened by Pillow's JPEG reader directly (see `_open_small_jpeg`).
SMALL_JPEG_BYTES = 64 * 1024
JPEG_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif"})
JPEG_SIGNATURE = b"\xff\xd8\xff"  # start of image, then the first marker
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# The resampling of models from elsewhere: OpenCV's fixed-point INTER_LINEAR warp of 8-bit images,
# which MediaPipe's ImageToTensor runs over the whole image (see `fixed_point_resize`).
FIXED_POINT_BILINEAR = "fixed_point_bilinear"
# How many numbers the text form of a Normalization has: MEAN,STD, or three means and three stds.
NORMALIZATION_SINGLE = 2
NORMALIZATION_PER_CHANNEL = 6


@dataclasses.dataclass(frozen=True)
class PreprocessSpec:
    """How a file becomes the model's input; embedded in every exported `.tflite`."""

    height: int = 32
    width: int = 32
    channels: int = 3
    color_order: str = "RGB"
    # float input = pixel * scale + offset, i.e. x / 255 in the default recipe.
    scale: float = 1.0 / PIXEL_SCALE
    offset: float = 0.0
    resize: str = "center_crop"  # crop to the input's aspect ratio, then resize
    resample: str = "bilinear"  # a Pillow filter (RESAMPLING), or FIXED_POINT_BILINEAR with "stretch"
    background: tuple[int, int, int] = (255, 255, 255)  # behind transparent pixels
    exif_orientation: bool = True

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of the specification."""
        data = dataclasses.asdict(self)
        data["background"] = list(self.background)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessSpec":
        """Rebuild a specification, ignoring keys a newer writer may have added."""
        known = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        if "background" in values:
            values["background"] = tuple(int(v) for v in values["background"])
        spec = cls(**values)
        spec.validate()
        return spec

    def validate(self) -> None:
        """Raise ValueError when the specification is not one this code implements."""
        if self.color_order != "RGB":
            raise ValueError(f"unsupported colour order {self.color_order!r} (only RGB)")
        if self.channels != 3:
            raise ValueError(f"unsupported channel count {self.channels} (only 3)")
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"unsupported resize policy {self.resize!r}")
        if self.resample not in RESAMPLING and self.resample != FIXED_POINT_BILINEAR:
            raise ValueError(f"unsupported resampling {self.resample!r}")
        if self.resample == FIXED_POINT_BILINEAR and self.resize != "stretch":
            raise ValueError(f"resampling {FIXED_POINT_BILINEAR!r} resizes the whole image: "
                             f"it needs the 'stretch' resize policy, not {self.resize!r}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"input size {self.width}x{self.height} is not positive")


@dataclasses.dataclass(frozen=True)
class Normalization:
    """real = (pixel - mean) / std, with one mean and std for all channels or one per channel.

    The rule of the official TFLite metadata's NormalizationOptions, which models from elsewhere
    carry (MobileNet's mean 127.5 and std 127.5 map pixels to [-1, 1]). Our own spec's
    x * scale + offset is the same rule with mean -offset / scale and std 1 / scale.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def parse(cls, text: str) -> "Normalization":
        """MEAN,STD (or three means and three stds, per channel), as `--normalization` takes it;
        ValueError saying what to give when `text` is not that, or cannot normalize an image."""
        try:
            numbers = [float(part) for part in text.split(",")]
        except ValueError:
            raise ValueError(f"{text!r} is not numbers: give MEAN,STD (e.g. 127.5,127.5)") from None
        if len(numbers) not in (NORMALIZATION_SINGLE, NORMALIZATION_PER_CHANNEL):
            raise ValueError(f"{text!r} has {len(numbers)} numbers: give MEAN,STD or three means and three stds")
        half = len(numbers) // 2
        normalization = cls(mean=tuple(numbers[:half]), std=tuple(numbers[half:]))
        normalization.validate()
        return normalization

    def validate(self, channels: int = 3) -> None:
        """Raise ValueError when the values cannot normalize an image of `channels` channels."""
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise ValueError(f"normalization {name} has {len(values)} values for {channels} channels")
            if not all(np.isfinite(values)):
                raise ValueError(f"normalization {name} {list(values)} is not finite")
        if any(value == 0.0 for value in self.std):
            raise ValueError(f"normalization std {list(self.std)} contains zero")
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            ends = [(np.float32(pixel) - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
                    for pixel in (0.0, PIXEL_SCALE)]
        if not all(np.isfinite(end).all() for end in ends):
            raise ValueError(f"normalization (pixel - {list(self.mean)}) / {list(self.std)} overflows float32")

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (..., channels) to float32 (pixel - mean) / std."""
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return (pixels.astype(np.float32) - mean) / std

    def apply_as_range(self, pixels: np.ndarray) -> np.ndarray:
        """The same values computed as MediaPipe computes float inputs, bit for bit.

        MediaPipe maps the pixel range [0, 255] linearly onto [(0 - mean) / std, (255 - mean) / std]:
        pixel * scale + offset in float32, which can differ from `apply` in the last bit.
        """
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        low = (np.float32(0.0) - mean) / std
        high = (np.float32(PIXEL_SCALE) - mean) / std
        scale = (high - low) / np.float32(PIXEL_SCALE)
        return pixels.astype(np.float32) * scale + low

    def describe(self) -> str:
        """The rule as people write it, e.g. '(pixel - 127.5) / 127.5'."""
        def values(numbers: tuple[float, ...]) -> str:
            shown = [f"{number:g}" for number in numbers]
            return shown[0] if len(set(shown)) == 1 else "[" + ", ".join(shown) + "]"

        return f"(pixel - {values(self.mean)}) / {values(self.std)}"


RESIZE_POLICIES = ("center_crop", "stretch")
RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
DEFAULT_SPEC = PreprocessSpec()


def open_image(source: str | os.PathLike | IO[bytes], name: str | None = None,
               max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an image lazily (header only), refusing non-images and oversized declarations.

    `name` is what error messages call the image (defaults to the path). The size limit is
    checked on the declared size, before any pixel is decoded. Pillow's own guard still raises
    for declarations over twice its limit; callers that want no DecompressionBombWarning for
    images between Pillow's limit and `max_pixels` filter it (as `batch.classify_files` does).
    """
    label = name if name is not None else str(source)
    try:
        image = Image.open(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"{label}: declares too many pixels to decode safely "
                         "(possible decompression bomb)") from error
    except (UnidentifiedImageError, OSError) as error:
        # Only a failure pays for a stat call, to say why: it runs for every image otherwise.
        reason = _unreadable_file_reason(source)
        if reason is None:
            if isinstance(error, UnidentifiedImageError):
                reason = "not a recognised image file"
            else:
                reason = f"cannot read ({error.strerror or error})"
        raise ImageError(f"{label}: {reason}") from error
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageError(f"{label}: declares {width}x{height} pixels, more than the limit of "
                         f"{max_pixels:,} (possible decompression bomb)")
    if width < 1 or height < 1:
        image.close()
        raise ImageError(f"{label}: declares an empty {width}x{height} image")
    return image


def _unreadable_file_reason(source: str | os.PathLike | IO[bytes]) -> str | None:
    """Why a path cannot be an image when the file system already says so; None otherwise."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    try:
        status = os.stat(source)
    except FileNotFoundError:
        return "no such file"
    except OSError as error:
        return f"cannot read ({error.strerror or error})"
    if stat.S_ISDIR(status.st_mode):
        return "is a folder, not an image file"
    if status.st_size == 0:
        return "file is empty (0 bytes)"
    return None


def to_rgb(image: Image.Image, spec: PreprocessSpec = DEFAULT_SPEC) -> Image.Image:
    """Bring any Pillow mode to 8-bit RGB: composite alpha on the background, scale 16-bit down."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        has_alpha = "transparency" in image.info or (image.palette is not None and image.palette.mode == "RGBA")
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*spec.background, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in SIXTEEN_BIT_MODES or mode == "F":
        array = np.asarray(image)
        if mode == "F":
            # Float images are taken as 0..1 intensities when they fit there, else as 0..255.
            maximum = float(np.nanmax(array)) if array.size else 0.0
            scaled = array * PIXEL_SCALE if maximum <= 1.0 else array
            gray = np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)
        else:
            # 16-bit samples (0..65535) to 8-bit, keeping the top byte.
            gray = np.clip(array.astype(np.int64) >> 8, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    return image.convert("RGB")


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate or flip as the EXIF orientation tag says; a no-op (and cheap) without the tag."""
    # getexif() is cheap when the file has no EXIF block, which is the common case for datasets.
    if "exif" not in image.info and not hasattr(image, "tag_v2"):
        return image
    orientation = image.getexif().get(EXIF_ORIENTATION_TAG, NORMAL_ORIENTATION)
    if orientation == NORMAL_ORIENTATION:
        return image
    from PIL import ImageOps  # only rotated photos need it: keeps start-up light

    return ImageOps.exif_transpose(image)


def _crop_box(width: int, height: int, target_width: int, target_height: int) -> tuple[float, float, float, float]:
    """The centred box of the source with the target's aspect ratio."""
    target_ratio = target_width / target_height
    if width / height > target_ratio:
        crop_width = height * target_ratio
        left = (width - crop_width) / 2
        return (left, 0.0, left + crop_width, float(height))
    crop_height = width / target_ratio
    top = (height - crop_height) / 2
    return (0.0, top, float(width), top + crop_height)


def resize_for_input(image: Image.Image, spec: PreprocessSpec = DEFAULT_SPEC) -> Image.Image:
    """Resize to the model's input size: with a Pillow filter (centre-cropping first under the
    default policy), or the whole RGB image as MediaPipe does (FIXED_POINT_BILINEAR)."""
    target = (spec.width, spec.height)
    if image.size == target:
        return image
    if spec.resample == FIXED_POINT_BILINEAR:
        from .fixed_point_resize import fixed_point_bilinear  # models from elsewhere only: not at start-up

        return Image.fromarray(fixed_point_bilinear(np.asarray(image), spec.height, spec.width))
    box = None
    if spec.resize == "center_crop":
        box = _crop_box(image.width, image.height, spec.width, spec.height)
    # reducing_gap lets Pillow shrink big photos by an integer factor first: much faster, same look.
    return image.resize(target, RESAMPLING[spec.resample], box=box, reducing_gap=3.0)


def prepare_image(image: Image.Image, spec: PreprocessSpec = DEFAULT_SPEC,
                  name: str = "image") -> np.ndarray:
    """Turn an opened Pillow image into the model's uint8 RGB input array (height, width, 3)."""
    try:
        if getattr(image, "is_animated", False):
            image.seek(0)
        # A JPEG draft decodes a big photo at 1/2, 1/4 or 1/8 scale, averaging blocks of pixels: fast,
        # and harmless before Pillow's filters, which average anyway. MediaPipe decodes the whole photo
        # and samples single pixels of it, which a draft would change: models from elsewhere decode
        # in full, about four times the time for a 12 MP photo (234 ms against 53 ms on a 2-core
        # x86 VM), so that their scores are MediaPipe's.
        if (image.format == "JPEG" and image.size != (spec.width, spec.height)
                and spec.resample != FIXED_POINT_BILINEAR):
            image.draft("RGB", (spec.width * JPEG_DRAFT_OVERSAMPLING, spec.height * JPEG_DRAFT_OVERSAMPLING))
        image.load()
        if spec.exif_orientation:
            image = _apply_exif_orientation(image)
        image = resize_for_input(to_rgb(image, spec), spec)
        if image.mode != "RGB" or image.size != (spec.width, spec.height):
            raise ImageError(f"{name}: decoded to an unexpected {image.mode} {image.width}x{image.height} image")
        # One copy out of Pillow, without np.asarray's array-interface detour (a read-only array, as before).
        return np.frombuffer(image.tobytes(), dtype=np.uint8).reshape(spec.height, spec.width, 3)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        reason = str(error) or type(error).__name__
        raise ImageError(f"{name}: cannot decode image ({reason})") from error


def load_image(path: str | os.PathLike, spec: PreprocessSpec = DEFAULT_SPEC) -> np.ndarray:
    """Read an image file into the model's uint8 RGB input array; ImageError names the file on failure."""
    name = str(path)
    image = _open_small_jpeg(path)
    if image is None:
        image = open_image(path, name=name, max_pixels=MAX_IMAGE_PIXELS)
    with image:
        return prepare_image(image, spec, name=name)


def load_image_bytes(data: bytes, spec: PreprocessSpec = DEFAULT_SPEC, name: str = "image") -> np.ndarray:
    """An image file's bytes (an upload) into the model's input array, as `load_image` reads a file."""
    with open_image(io.BytesIO(data), name=name, max_pixels=MAX_IMAGE_PIXELS) as image:
        return prepare_image(image, spec, name=name)


def _open_small_jpeg(path: str | os.PathLike) -> Image.Image | None:
    """A small JPEG file read in one call and opened by Pillow's JPEG reader itself; None for anything else.

    The shortcut of a dataset's thumbnails: Pillow's `Image.open` would read the file in pieces and
    ask other readers first, which costs more than the JPEG's header itself (BENCHMARKS.md, issue
    13's follow-up). Taken only where `Image.open` would give the same image without a word: a
    file named and starting as a JPEG, of at most SMALL_JPEG_BYTES, that the JPEG reader opens,
    declaring no more pixels than Pillow warns about or we allow. Anything else goes through
    `open_image`, which reads the file again and says what is wrong in its usual words.
    """
    location = os.fspath(path)
    if not isinstance(location, str) or os.path.splitext(location)[1].lower() not in JPEG_EXTENSIONS:
        return None
    try:
        with open(location, "rb") as handle:
            data = handle.read(SMALL_JPEG_BYTES + 1)
    except OSError:
        return None
    if len(data) > SMALL_JPEG_BYTES or not data.startswith(JPEG_SIGNATURE):
        return None
    from PIL import JpegImagePlugin  # imported by Pillow for any .jpg anyway

    try:
        image = JpegImagePlugin.jpeg_factory(io.BytesIO(data))
    except Exception:  # whatever it is, open_image meets it again and reports it as it always has
        return None
    width, height = image.size
    pixels = width * height
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if width < 1 or height < 1 or pixels > MAX_IMAGE_PIXELS or (pillow_limit is not None and pixels > pillow_limit):
        image.close()
        return None
    return image


def array_to_input(frame: np.ndarray, spec: PreprocessSpec = DEFAULT_SPEC) -> np.ndarray:
    """Bring an RGB uint8 array (a camera frame, a decoded dataset image) to the model's input array."""
    if frame.ndim == 2:
        frame = np.stack([frame] * 3, axis=-1)
    if frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise ImageError(f"frame of shape {frame.shape} is not an RGB image")
    if frame.shape[2] == 4:
        image = to_rgb(Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8), "RGBA"), spec)
    else:
        if frame.shape[:2] == (spec.height, spec.width) and frame.dtype == np.uint8:
            return np.ascontiguousarray(frame)
        if spec.resample == FIXED_POINT_BILINEAR:
            from .fixed_point_resize import fixed_point_bilinear

            # Straight from the frame: no detour through Pillow.
            return fixed_point_bilinear(np.asarray(frame, dtype=np.uint8), spec.height, spec.width)
        image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8), "RGB")
    return np.asarray(resize_for_input(image, spec), dtype=np.uint8)


def scale_pixels(pixels: np.ndarray, spec: PreprocessSpec = DEFAULT_SPEC) -> np.ndarray:
    """uint8 pixels to the float32 values the network was trained on (x / 255 by default)."""
    if spec.scale == 1.0 / PIXEL_SCALE and spec.offset == 0.0:
        # Divide rather than multiply by 1/255: bit-identical to the recipe's x / 255.
        return pixels.astype(np.float32) / np.float32(PIXEL_SCALE)
    return pixels.astype(np.float32) * np.float32(spec.scale) + np.float32(spec.offset)
