"""Command-line inputs (files and folders) expanded into the image files to classify.

Files named on the command line are always tried, whatever their extension, so a bad file gets a
line that says why. Folders contribute the files whose extension Pillow can usually read, in
sorted order, skipping hidden files; `recursive` descends into sub-folders. A folder whose name
looks like an image file (`x.jpg/`) is reported as a bad input rather than silently entered.
Without `recursive`, the sub-folders passed over are recorded (their names only: nothing below
them is listed), so the CLI can say that they were not searched.
"""

from __future__ import annotations

import os
import stat
from typing import Iterable, Iterator, NamedTuple, Sequence

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".webp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".pcx", ".sgi", ".im", ".dds",
})
FOLDER_NAMED_LIKE_IMAGE = "is a folder, not an image file"
NOT_FOUND = "no such file or folder"
NO_IMAGES = "folder has no image files"
ONLY_SUB_FOLDERS = "folder has no image files, only sub-folders: use -r (--recursive) to classify the images in them"
RECURSIVE_HINT = "use -r (--recursive) to search sub-folders too"
# Sub-folder names a note shows before "and N more".
NAMES_SHOWN = 3


class InputItem(NamedTuple):
    """One thing to classify: an image path, or a path with the reason it cannot be one."""

    path: str
    error: str | None = None


class PassedOver(NamedTuple):
    """A folder walked without `recursive`, and the names of the sub-folders that were not searched.

    `reported` is True when the folder itself came out as an ONLY_SUB_FOLDERS error item, whose
    reason already asks for -r.
    """

    folder: str
    sub_folders: tuple[str, ...]
    reported: bool = False


def has_image_extension(name: str) -> bool:
    """True when `name` ends with an extension of an image format Pillow reads."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def expand_inputs(inputs: Iterable[str], recursive: bool = False,
                  passed_over: list[PassedOver] | None = None) -> Iterator[InputItem]:
    """Yield the image paths named by `inputs`, in the order given and sorted inside folders.

    Problems that are known before reading a file (a missing path, a folder without images)
    come out as items with an `error`, in place, so the caller reports them with the rest.
    Each folder whose sub-folders were not searched is appended to `passed_over`, once its own
    items have been yielded.
    """
    for raw in inputs:
        path = os.fspath(raw)
        try:
            mode = os.stat(path).st_mode
        except OSError as error:
            reason = NOT_FOUND if isinstance(error, FileNotFoundError) else f"cannot read ({error.strerror})"
            yield InputItem(path, reason)
            continue
        if not stat.S_ISDIR(mode):
            yield InputItem(path)
        elif has_image_extension(path.rstrip("/" + os.sep)):
            yield InputItem(path, FOLDER_NAMED_LIKE_IMAGE)
        else:
            found = False
            skipped_folders: list[str] = []
            for item in _walk_folder(path, recursive, set(), skipped_folders):
                found = True
                yield item
            if not found:
                yield InputItem(path, ONLY_SUB_FOLDERS if skipped_folders else NO_IMAGES)
            if skipped_folders and passed_over is not None:
                names = tuple(os.path.basename(folder) for folder in skipped_folders)
                passed_over.append(PassedOver(path, names, reported=not found))


def _walk_folder(folder: str, recursive: bool, visited: set[str],
                 skipped_folders: list[str]) -> Iterator[InputItem]:
    """Image files of one folder in name order, descending depth-first when `recursive`.

    `visited` holds the real paths already walked, so a symbolic link loop is entered once;
    without `recursive`, the sub-folders passed over are added to `skipped_folders`.
    """
    real = os.path.realpath(folder)
    if real in visited:
        return
    visited.add(real)
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError as error:
        yield InputItem(folder, f"cannot list folder ({error.strerror})")
        return
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            continue
        try:
            is_folder = entry.is_dir()
        except OSError:
            is_folder = False
        if is_folder:
            if has_image_extension(name):
                yield InputItem(entry.path, FOLDER_NAMED_LIKE_IMAGE)
            elif recursive:
                yield from _walk_folder(entry.path, recursive, visited, skipped_folders)
            else:
                skipped_folders.append(entry.path)
        elif has_image_extension(name):
            yield InputItem(entry.path)


def passed_over_notes(passed_over: Sequence[PassedOver], errors_shown: bool) -> list[str]:
    """One line per folder whose sub-folders were not searched, naming a few of them.

    With `errors_shown` (text output, whose error lines reach the person), a folder already
    reported as ONLY_SUB_FOLDERS gets no second line.
    """
    notes = []
    for folder, names, reported in passed_over:
        if reported and errors_shown:
            continue
        shown = ", ".join(names[:NAMES_SHOWN])
        if len(names) > NAMES_SHOWN:
            shown += f" and {len(names) - NAMES_SHOWN} more"
        noun = "sub-folder" if len(names) == 1 else "sub-folders"
        notes.append(f"{folder}: {len(names)} {noun} not searched ({shown}): {RECURSIVE_HINT}")
    return notes
