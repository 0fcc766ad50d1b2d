"""Build preprocess inputs in tests: a raw folder (``samples.parquet`` + a content-addressed
``objects/`` store) and the image files of every bad-input case, made in memory."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from cmrops.schema import RAW_SAMPLES


@dataclass
class RawSample:
    key: str
    data: bytes
    captions: Sequence[str] = ("a photo",)
    labels: Sequence[str] = ()
    source: str = "test"
    extra: dict[str, object] = field(default_factory=dict)
    media: str = "image"


def write_raw(raw: Path, samples: Sequence[RawSample]) -> pa.Table:
    """Write ``samples`` as collect would: bytes under ``objects/ab/<sha256>``, one row each."""
    rows = []
    for s in samples:
        digest = hashlib.sha256(s.data).hexdigest()
        rel = f"objects/{digest[:2]}/{digest}"
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_bytes(s.data)
        sid = hashlib.sha256((digest + "\x00" + "\x00".join(s.captions)).encode()).hexdigest()[:16]
        rows.append(
            {
                "sample_id": sid,
                "source": s.source,
                "source_key": s.key,
                "image_sha256": digest,
                "image_path": rel,
                "image_bytes": len(s.data),
                "captions": list(s.captions),
                "labels": list(s.labels),
                "extra": json.dumps(s.extra, sort_keys=True),
                "media": s.media,
            }
        )
    table = pa.Table.from_pylist(rows, schema=RAW_SAMPLES)
    raw.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, raw / "samples.parquet")
    return table


def coco_samples(coco_root: Path, n: int | None = None) -> list[RawSample]:
    """The COCO sample's pairs as raw samples (first ``n`` lines of ``pairs.jsonl``)."""
    lines = (coco_root / "pairs.jsonl").read_text().splitlines()
    out = []
    for line in lines[:n]:
        r = json.loads(line)
        out.append(
            RawSample(
                key=r["image"],
                data=(coco_root / r["image"]).read_bytes(),
                captions=r["captions"],
                labels=r["labels"],
                source="coco",
                extra={"coco_id": r["coco_id"]},
            )
        )
    return out


# --------------------------------------------------------------------------- image makers


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(w: int = 96, h: int = 64, seed: int = 0) -> Image.Image:
    """A smooth random RGB picture (gradients plus blobs), distinct per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    chans = []
    for _ in range(3):
        a, b, c = rng.uniform(-3, 3, 3)
        chans.append(np.sin(a * x * 6 + b * y * 6 + c) * 0.5 + 0.5)
    arr = (np.stack(chans, -1) * 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` (8-bit RGB) with one tiny IDAT: a bomb header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _chunk(b"IEND", b"")
    )


def png_16bit_rgb(arr: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG of ``arr`` (``(h, w, 3)`` big-endian uint16), written by
    hand because Pillow cannot save one."""
    h, w, _ = arr.shape
    rows = b"".join(b"\x00" + arr[r].astype(">u2").tobytes() for r in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def exif_rotated_jpeg(w: int = 64, h: int = 32, orientation: int = 6) -> bytes:
    """A ``w x h`` JPEG (left half red, right half blue) with EXIF orientation set."""
    im = Image.new("RGB", (w, h), (220, 20, 20))
    im.paste((20, 20, 220), (w // 2, 0, w, h))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(im, "JPEG", exif=exif.tobytes(), quality=95)


def animated_gif(frames: int = 3, size: tuple[int, int] = (32, 32)) -> bytes:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    ims = [Image.new("RGB", size, colours[i % len(colours)]) for i in range(frames)]
    return encode(ims[0], "GIF", save_all=True, append_images=ims[1:], duration=50, loop=0)


def bad_images(jpeg: bytes) -> dict[str, tuple[bytes, str]]:
    """Every bad image of the issue as ``name -> (bytes, expected quarantine reason)``;
    ``jpeg`` is a real photo's JPEG bytes (cut to make the truncated case)."""
    png = encode(photo(128, 96, seed=7), "PNG")
    return {
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], "truncated_image"),
        "truncated_jpeg_header": (jpeg[:100], "truncated_image"),
        "truncated_png": (png[: len(png) // 2], "truncated_image"),
        "truncated_png_header": (png[:40], "truncated_image"),
        "zero_byte": (b"", "empty_file"),
        "html_as_jpg": (
            b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n",
            "not_an_image",
        ),
        "bomb_header": (png_header_only(100_000, 100_000), "decompression_bomb"),
        "one_by_one": (encode(Image.new("RGB", (1, 1), "red"), "PNG"), "degenerate_size"),
        "hundred_thousand_by_one": (
            encode(Image.new("L", (100_000, 1), 128), "PNG"),
            "degenerate_size",
        ),
    }
