"""Safe image decoding, encoder-size copies and 64-bit perceptual hashes.

Decoding (:func:`decode_image`) never lets a damaged file through as a grey or black picture:

* a **pixel cap** is checked on the header before any pixel is decoded, with Pillow's own
  decompression-bomb check set to the same cap for the duration of the call (its warning is
  turned into an error), so a PNG whose header claims 100000 x 100000 pixels costs nothing;
* the image is **fully decoded** (``load()``, not ``verify()``) with
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` left off, so a truncated JPEG or PNG raises;
* EXIF orientation is applied; CMYK, 16-bit, palette, alpha (composited on white) and
  animated (first frame, frame count recorded) images all come out as 8-bit RGB.

Every refusal is an :class:`ImageRejected` with a short stable ``reason`` code (see
:data:`REASONS`) and a human ``detail`` sentence; the preprocess stage turns it into a
quarantine row.

Hashes are returned as Python ``int`` in ``[0, 2**64)`` (store them as ``numpy.uint64``). Bit
order is the one used for every packed code in cmrops: **hash bit j is ``(value >> j) & 1``**,
i.e. bit ``j % 64`` of 64-bit word ``j // 64``. For the 8 x 8 hashes here, bit ``j`` is the cell
at row ``j // 8``, column ``j % 8`` (row-major), so ``bits = (value >> arange(64)) & 1`` reshaped
to ``(8, 8)`` equals ``imagehash``'s boolean matrix for the same picture.
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

#: Stable reason codes an :class:`ImageRejected` may carry.
REASONS: Final = (
    "empty_file",  # zero bytes
    "not_an_image",  # bytes of no image format (HTML, text, ...)
    "truncated_image",  # a known image format whose data ends early
    "corrupt_image",  # a known format that fails to decode for another reason
    "decompression_bomb",  # more pixels than the cap
    "degenerate_size",  # a side below min_side, or an aspect ratio above max_aspect
)

# Leading bytes of the formats Pillow decodes; bytes that start like an image but cannot be
# identified are a cut-off header (truncated), anything else is not an image at all.
_MAGIC: Final = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"GIF87a",
    b"GIF89a",
    b"BM",  # BMP
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
    b"\x00\x00\x01\x00",  # ICO
    b"\x00\x00\x00\x0cjP  ",  # JPEG 2000
)

_BOMB_LOCK = threading.Lock()


class ImageRejected(Exception):
    """An image that cannot be used: ``reason`` is a code from :data:`REASONS`, ``detail`` one
    human sentence, ``evidence`` the measured facts (sizes, limits) as a JSON-ready dict."""

    def __init__(self, reason: str, detail: str, evidence: dict[str, Any] | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown image rejection reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.evidence: dict[str, Any] = evidence or {}


@dataclass(frozen=True)
class DecodeLimits:
    """Limits applied to every decode.

    ``max_pixels`` caps width x height (decompression bombs); ``min_side`` is the smallest
    allowed width or height; ``max_aspect`` the largest allowed long side / short side.
    """

    max_pixels: int = 50_000_000
    min_side: int = 16
    max_aspect: float = 10.0

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.min_side < 1:
            raise ValueError(f"min_side must be >= 1, got {self.min_side}")
        if self.max_aspect < 1.0:
            raise ValueError(f"max_aspect must be >= 1.0, got {self.max_aspect}")


@dataclass(frozen=True)
class DecodedImage:
    """An image decoded to 8-bit RGB.

    ``width``/``height`` are after EXIF orientation (the size a viewer shows); ``format`` is
    Pillow's format name (``JPEG``, ``PNG``, ...); ``mode`` the mode before conversion;
    ``n_frames`` the frame count of an animated image (its first frame is used).
    """

    image: Image.Image
    width: int
    height: int
    format: str
    mode: str
    n_frames: int


@contextlib.contextmanager
def _pixel_cap(max_pixels: int) -> Iterator[None]:
    """Make Pillow's own bomb check use ``max_pixels`` and raise instead of warning."""
    with _BOMB_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _classify_decode_error(
    data: bytes, err: BaseException, stage: str, max_pixels: int
) -> ImageRejected:
    if isinstance(err, Image.DecompressionBombError | Image.DecompressionBombWarning):
        found = re.search(r"\((\d+) pixels\)", str(err))
        facts = {"max_pixels": max_pixels, **({"pixels": int(found[1])} if found else {})}
        return ImageRejected("decompression_bomb", f"{stage}: {err}", facts)
    msg = str(err) or type(err).__name__
    if isinstance(err, UnidentifiedImageError):
        if data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            return ImageRejected(
                "truncated_image", f"image header is cut short ({len(data)} bytes in all)"
            )
        head = data[:16].decode("ascii", "backslashreplace")
        return ImageRejected("not_an_image", f"bytes are not a known image format (start {head!r})")
    if isinstance(err, EOFError) or "truncated" in msg.lower():
        return ImageRejected("truncated_image", f"{stage}: {msg}")
    return ImageRejected("corrupt_image", f"{stage}: {type(err).__name__}: {msg}")


def decode_image(data: bytes, limits: DecodeLimits | None = None) -> DecodedImage:
    """Fully decode ``data`` to 8-bit RGB, or raise :class:`ImageRejected`."""
    limits = limits or DecodeLimits()
    if not data:
        raise ImageRejected("empty_file", "the file is empty (0 bytes)")
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # another library switched it on: refuse to guess
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on; cmrops needs it off")
    with _pixel_cap(limits.max_pixels):
        try:
            im = Image.open(io.BytesIO(data))
        except Exception as e:  # any malformed input is a rejection, never a crash
            raise _classify_decode_error(data, e, "open", limits.max_pixels) from e
        width, height = im.size
        _check_size(width, height, limits)
        fmt = im.format or "UNKNOWN"
        n_frames = int(getattr(im, "n_frames", 1) or 1)
        try:
            im.seek(0)
            im.load()  # full decode of the first frame
        except Exception as e:
            raise _classify_decode_error(data, e, "decode", limits.max_pixels) from e
    mode = im.mode
    with contextlib.suppress(Exception):  # a broken EXIF block loses only the orientation
        ImageOps.exif_transpose(im, in_place=True)
    try:
        rgb = to_rgb(im)
    except Exception as e:  # an exotic mode Pillow opens but cannot convert
        raise ImageRejected("corrupt_image", f"convert {mode} to RGB: {e}", {"mode": mode}) from e
    return DecodedImage(rgb, rgb.width, rgb.height, fmt, mode, n_frames)


def _check_size(width: int, height: int, limits: DecodeLimits) -> None:
    pixels = width * height
    facts: dict[str, Any] = {"width": width, "height": height}
    if pixels > limits.max_pixels:
        raise ImageRejected(
            "decompression_bomb",
            f"{width}x{height} = {pixels} pixels exceeds the cap of {limits.max_pixels}",
            {**facts, "max_pixels": limits.max_pixels},
        )
    short, long_ = min(width, height), max(width, height)
    if short < limits.min_side:
        raise ImageRejected(
            "degenerate_size",
            f"{width}x{height}: a side is below min_side={limits.min_side}",
            {**facts, "min_side": limits.min_side},
        )
    if long_ / short > limits.max_aspect:
        raise ImageRejected(
            "degenerate_size",
            f"{width}x{height}: aspect ratio {long_ / short:.1f} exceeds max_aspect="
            f"{limits.max_aspect}",
            {**facts, "max_aspect": limits.max_aspect},
        )


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: alpha is composited on white, 16-bit and 32-bit
    integer grey is scaled down (``I;16*`` by 1/257; ``I`` likewise when its values exceed 255),
    float grey is min-max scaled, CMYK/YCbCr/LAB/HSV/palette go through Pillow's converters."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La", "RGBX"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        return _wide_grey_to_rgb(im)
    return im.convert("RGB")


def _wide_grey_to_rgb(im: Image.Image) -> Image.Image:
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        grey = (arr.astype(np.float64) / 257.0).round()
    elif im.mode == "F":
        arr = np.nan_to_num(arr.astype(np.float64))
        lo, hi = float(arr.min()), float(arr.max())
        grey = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    else:  # "I": 32-bit signed; most often 16-bit data (older PNG / TIFF readers)
        arr = arr.astype(np.float64)
        grey = arr if arr.max(initial=0) <= 255 else np.clip(arr, 0, 65535) / 257.0
    g8 = np.clip(grey.round(), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(g8[:, :, None], 3, axis=2), "RGB")


def resize_for_encoder(image: Image.Image, size: int) -> np.ndarray:
    """Centre-crop the largest square and resize it to ``size x size`` (antialiased bilinear) -
    the same picture as "shorter side to ``size``, then centre crop", in one resampling pass
    over only the pixels kept. Returns ``uint8`` of shape ``(size, size, 3)``."""
    if size < 1:
        raise ValueError(f"encoder size must be >= 1, got {size}")
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    box = (left, top, left + side, top + side)
    out = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.ascontiguousarray(np.asarray(out), dtype=np.uint8)


@cache
def _dct_matrix(n: int) -> np.ndarray:
    """Unnormalised DCT-II matrix (``scipy.fft.dct(x, norm=None) / 2``): ``D @ x`` is the DCT-II
    of column vector ``x``. Unnormalised like ``imagehash``, so row/column 0 weigh the same as
    the others when compared with the median."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    return np.cos(np.pi * (2 * i + 1) * k / (2 * n))


def bits_to_uint64(bits: np.ndarray) -> int:
    """Pack 64 booleans into an int: ``bits[j]`` becomes bit ``j`` (``(value >> j) & 1``)."""
    flat = np.asarray(bits, dtype=bool).reshape(-1)
    if flat.size != 64:
        raise ValueError(f"expected 64 bits, got {flat.size}")
    return int(np.packbits(flat, bitorder="little").view("<u8")[0])


def uint64_to_bits(value: int) -> np.ndarray:
    """Inverse of :func:`bits_to_uint64`: a ``(64,)`` bool array."""
    word = np.array([int(value)], dtype="<u8").view(np.uint8)
    return np.unpackbits(word, bitorder="little").astype(bool)


def phash_bits(image: Image.Image) -> np.ndarray:
    """The 8 x 8 pHash matrix: grey, 32 x 32 Lanczos, 2-D DCT-II, top-left 8 x 8 (DC included)
    compared with its median - the same recipe as ``imagehash.phash``."""
    grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), np.float64)
    d = _dct_matrix(32)
    low = (d @ grey @ d.T)[:8, :8]
    return low > np.median(low)


def dhash_bits(image: Image.Image) -> np.ndarray:
    """The 8 x 8 dHash matrix: grey, 9 x 8 Lanczos, each pixel brighter than its left neighbour
    (the same recipe as ``imagehash.dhash``)."""
    grey = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), np.int16)
    return grey[:, 1:] > grey[:, :-1]


def phash64(image: Image.Image) -> int:
    """64-bit DCT perceptual hash as an int (bit order in the module docstring)."""
    return bits_to_uint64(phash_bits(image))


def dhash64(image: Image.Image) -> int:
    """64-bit difference hash as an int (bit order in the module docstring)."""
    return bits_to_uint64(dhash_bits(image))


def image_hashes(image: Image.Image) -> tuple[int, int]:
    """``(phash64, dhash64)`` of one image, converting it to grey once."""
    grey = image.convert("L")
    return phash64(grey), dhash64(grey)


def hamming64(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit hashes."""
    return (int(a) ^ int(b)).bit_count()
