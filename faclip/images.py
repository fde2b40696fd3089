"""The one image decoder. Every image faclip reads goes through `load_rgb` / `decode_image`: `prepare`'s
check, `embed`, `search` and `serve`, so an image `prepare` accepts is one `embed` decodes, and a bad one
is one line (an `ImageRefused`, whose `kind` is `prepare`'s skip reason), never a traceback or a hang.

The guards, in order:
- a path is read only if it is a regular file of at most MAX_IMAGE_BYTES (a FIFO or device is never opened);
- only the photo formats in FORMATS are tried, none of which decodes a pixel when opened (ICO does, of
  an embedded PNG of any size; ICNS decodes past its header's size; EPS runs Ghostscript: all refused);
- the size the header claims passes `image_size_problem` (pixels, aspect) before anything is decoded,
  and so do a TIFF's tiles (each is decoded into a buffer of its own size, whatever the image's);
- whatever Pillow raises while opening, decoding or converting (ValueError, TypeError, struct.error,
  SyntaxError, EOFError, OSError, ...) is an ImageRefused of kind `corrupt`.

What it returns is upright (EXIF orientation applied; EXIF Pillow cannot parse is ignored, the pixels
are used as stored) 8-bit RGB: transparent pixels over white, 16/32-bit and float greys scaled to 0..255.
"""

import contextlib
import io
import logging
import re
from pathlib import Path
from typing import Union

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from faclip.errors import FaclipError
from faclip.files import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, RefusedFile, image_size_problem, read_regular_file

logger = logging.getLogger(__name__)

ImageSource = Union[str, Path, bytes, Image.Image]

# The formats Image.open may try: photo formats whose header gives the size that is decoded, so the
# pixel guard runs before any decode. JPEG includes MPO (how Pillow opens many cameras' JPEGs); PPM
# includes PGM and PBM.
FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP", "TIFF", "PPM")
FORMATS_HINT = "give a JPEG, PNG or WebP file (also read: AVIF, GIF, BMP, TIFF, PGM/PPM)"

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "P", "PA")
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# A Pillow message may name an in-memory object (`<_io.BytesIO object at 0x7f...>`): never in a message.
_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>|\s+at 0x[0-9a-fA-F]+")


class ImageRefused(FaclipError):
    """An image faclip will not use: `kind` (outside_root, missing, not_a_file, unreadable, too_large,
    extreme_aspect, corrupt) is `prepare`'s skip reason without its `image_` prefix; `detail` says why."""

    def __init__(self, name: str, kind: str, detail: str):
        if kind in ("too_large", "extreme_aspect"):
            fix = "crop or shrink it"
        elif kind == "corrupt":
            fix = FORMATS_HINT
        else:  # what files.read_regular_file refuses
            fix = "give the path of a regular image file"
        super().__init__(f"cannot read image {name}: {detail}; {fix}")
        self.kind, self.detail = kind, detail


def error_detail(err: BaseException) -> str:
    """An exception as one line for a message: its type, and its text without object addresses."""
    text = " ".join(_ADDRESS.sub("", str(err)).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def load_rgb(source: ImageSource, min_side: int | None = None, budget=None) -> Image.Image:
    """An image (a path, bytes or a PIL image) as upright 8-bit RGB, through every guard above.

    With `min_side`, a JPEG is decoded at the smallest DCT scale whose both sides stay >= min_side, and any
    image is then reduced by the largest whole factor that keeps its shorter side >= min_side.
    With `budget` (a `faclip.batching.PixelBudget`), the decode holds its pixels from the budget, so
    concurrent decodes (a server's uploads) never hold more than the budget at once.
    A path that is not a regular file is refused unopened (`search --image` on a FIFO does not hang)."""
    if isinstance(source, Image.Image):
        return _guarded(source, "the given image", min_side=None)
    if isinstance(source, bytes):
        return decode_image(source, "the uploaded bytes", min_side, budget)
    name = str(source)
    try:
        data = read_regular_file(source, None, MAX_IMAGE_BYTES)
    except RefusedFile as refused:
        raise ImageRefused(name, refused.kind, refused.detail) from None
    return decode_image(data, name, min_side, budget)


def decode_image(data: bytes, name: str, min_side: int | None = None, budget=None) -> Image.Image:
    """An image file's bytes as upright 8-bit RGB (see `load_rgb`); `name` names it in errors."""
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:  # its message names a Python object, not the problem
        raise ImageRefused(name, "corrupt", f"not a format faclip reads ({', '.join(FORMATS)}), or damaged") from None
    except Image.DecompressionBombError as err:
        raise ImageRefused(name, "too_large", error_detail(err)) from None
    except MemoryError:
        raise
    except Exception as err:  # a malformed header (a PPM size `4x`: ValueError), among others
        raise ImageRefused(name, "corrupt", error_detail(err)) from None
    with image:
        return _guarded(image, name, min_side, budget)


def _guarded(image: Image.Image, name: str, min_side: int | None, budget=None) -> Image.Image:
    problem = image_size_problem(*image.size) or _tile_problem(image)  # from the header: nothing decoded yet
    if problem is not None:
        raise ImageRefused(name, *problem)
    try:
        if min_side and image.format == "JPEG":
            image.draft(image.mode, (min_side, min_side))  # sets the reduced size; decodes nothing yet
        with budget.hold(image.width * image.height) if budget is not None else contextlib.nullcontext():
            image.load()  # the full decode: a truncated or corrupt file fails here
            return _reduced(_to_rgb(image, name), min_side)
    except Image.DecompressionBombError as err:
        raise ImageRefused(name, "too_large", error_detail(err)) from None
    except MemoryError:
        raise
    except Exception as err:  # decoders raise all sorts on damaged data; none may escape as a traceback
        raise ImageRefused(name, "corrupt", error_detail(err)) from None


def _tile_problem(image: Image.Image) -> tuple[str, str] | None:
    """`too_large` for a TIFF whose tiles (TileWidth x TileLength) hold more than MAX_IMAGE_PIXELS: an 8x8
    image of 32768x32768 tiles would take 1 GB to decode."""
    tags = getattr(image, "tag_v2", None)
    width, length = (tags.get(322), tags.get(323)) if tags is not None else (None, None)
    if isinstance(width, int) and isinstance(length, int) and width * length > MAX_IMAGE_PIXELS:
        return "too_large", (f"its TIFF tiles are {width}x{length} pixels, more than the "
                             f"{MAX_IMAGE_PIXELS // 1_000_000} Mpx limit")
    return None


def _reduced(image: Image.Image, min_side: int | None) -> Image.Image:
    """`image` reduced by the largest whole factor that keeps its shorter side >= `min_side`: what a JPEG's
    draft saves, for every format (the vision processor resizes to its input size after this anyway)."""
    factor = min(image.size) // min_side if min_side else 1
    return image.reduce(factor) if factor >= 2 else image


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    image = _upright(image, name)
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        image = _grey8(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def _upright(image: Image.Image, name: str) -> Image.Image:
    """`image` turned as its EXIF (or XMP) orientation says. Only the pixels are turned: the metadata is
    not rewritten (ImageOps.exif_transpose rewrites it, and fails on EXIF it cannot write back, such as an
    XResolution stored as text). EXIF that cannot be parsed at all leaves the pixels as stored."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception as err:  # TypeError, struct.error, SyntaxError... from a damaged or fuzzed block
        logger.warning("image %s: its EXIF cannot be read (%s); used as stored, without rotation", name,
                       error_detail(err))
        return image
    method = _ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    return image.transpose(method) if method is not None else image


def _grey8(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float grey image as 8-bit grey. Integers that fit 16 bits are scaled by 16-bit
    full scale (what scanners write; Pillow scales a PGM's maxval to it), floats in 0..1 by 1; any other
    values by their own range, min to black and max to white. NaN and infinities are black."""
    values = np.array(image, dtype=np.float32)  # (H, W); a copy: scaled in place
    if image.mode == "F":
        values[~np.isfinite(values)] = np.nan
    lo, hi = (float(np.nanmin(values)), float(np.nanmax(values))) if not np.isnan(values).all() else (0.0, 0.0)
    full_scale = 1.0 if image.mode == "F" else 65535.0
    if lo >= 0 and hi <= full_scale:
        lo, hi = 0.0, full_scale
    np.nan_to_num(values, copy=False, nan=lo)
    values -= lo
    values *= 255.0 / (hi - lo) if hi > lo else 0.0
    return Image.fromarray(np.clip(values, 0, 255, out=values).round().astype(np.uint8), "L")
