"""Content-derived sample identifiers.

A sample is one image with its captions, so its id is a digest of exactly that: reruns, reordered
inputs and added data leave every existing id unchanged, and the same (image, captions) reached
through two inputs is one sample.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

SAMPLE_ID_HEX = 16


def sample_id(image_sha256: str, captions: Sequence[str]) -> str:
    """First 16 hex chars of sha256(image digest + "\\n" + the captions as a JSON list).

    ``image_sha256`` is the lower-case hex digest of the image bytes; captions are taken as
    provided (before normalisation), in order. The JSON encoding is unambiguous: ``["a\\nb"]``
    and ``["a", "b"]`` are different samples.
    """
    if len(image_sha256) != 64 or any(c not in "0123456789abcdef" for c in image_sha256):
        raise ValueError(f"image_sha256 must be 64 lower-case hex chars, got {image_sha256!r}")
    text = image_sha256 + "\n" + json.dumps(list(captions), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:SAMPLE_ID_HEX]
