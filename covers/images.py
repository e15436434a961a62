"""Cover images → RGB arrays, with every kind of bad file turned into a clear, per-item error.

Handled: CMYK, greyscale (8- and 16-bit), palette and alpha images are converted to RGB (alpha
composited on white); EXIF orientation is applied; huge JPEGs are decoded at reduced size
(``draft``) instead of at full resolution.
Refused with a reason: missing files, anything but a regular file (a folder, a device), files
beyond the byte limit, non-images, truncated files, images too small to be a cover, and images
beyond the pixel limit.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from data.covers import MAX_COVER_BYTES
from data.items import input_file_problem

#: Smallest side accepted as a cover (a 1×1 "image" carries no cover).
MIN_SIDE = 16
#: Largest image decoded (pixels); a 10,000×10,000 JPEG is drafted down before this applies.
MAX_PIXELS = 120_000_000


class CoverError(ValueError):
    """A cover that cannot be used: missing, not an image, truncated, too small or too large."""


def check_cover_file(path: str | Path) -> None:
    """Raise :class:`CoverError` unless ``path`` is a regular file of at most :data:`MAX_COVER_BYTES`."""
    problem = input_file_problem(path, MAX_COVER_BYTES)
    if problem:
        raise CoverError(problem)


def load_cover(path: str | Path, size: int) -> np.ndarray:
    """Decode ``path`` and resize to ``size``×``size`` RGB: ``uint8 (size, size, 3)``.

    Covers are square; a non-square image is resized without cropping (its aspect changes).
    Raises :class:`CoverError` with the reason.
    """
    path = Path(path)
    check_cover_file(path)
    try:
        with warnings.catch_warnings():
            # Our own MAX_PIXELS check applies after JPEG drafting; PIL's warning would fire before it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if min(image.size) < MIN_SIDE:
                    raise CoverError(f"too small: {path.name} is {image.size[0]}×{image.size[1]} pixels")
                # JPEG decoders can scale by 1/2…1/8 while decoding: cheap for huge covers.
                image.draft("RGB", (size * 2, size * 2))
                if image.size[0] * image.size[1] > MAX_PIXELS:
                    raise CoverError(f"too large: {path.name} is {image.size[0]}×{image.size[1]} pixels")
                image.load()
                # A photo's EXIF orientation says how it is meant to be seen; covers straight from a
                # phone or scanner carry one. Without it the cover would be scored sideways.
                rgb = _to_rgb(ImageOps.exif_transpose(image))
    except CoverError:
        raise
    except Image.DecompressionBombError as error:
        raise CoverError(f"too large: {path.name}: {error}") from error
    except UnidentifiedImageError as error:
        raise CoverError(f"not a usable image: {path.name}: {error}") from error
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise CoverError(f"corrupt image: {path.name}: {error}") from error
    return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


#: Single-channel modes wider than 8 bits (16-bit greyscale PNG, 32-bit integer, float).
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _wide_grey_to_rgb(image: Image.Image) -> Image.Image:
    """A 16-bit (or integer/float) greyscale image as 8-bit RGB, scaled to its range.

    Pillow's ``convert("RGB")`` clips such values at 255, which turns a 16-bit PNG white.
    """
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or values.max(initial=0) > 255:
        values = values / 257.0  # 0…65535 → 0…255
    elif image.mode == "F" and values.max(initial=0) <= 1.0:
        values = values * 255.0  # 0…1 → 0…255
    grey = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    return grey.convert("RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in WIDE_GREY_MODES:
        return _wide_grey_to_rgb(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
