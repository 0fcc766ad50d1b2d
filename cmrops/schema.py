"""Column contracts of the tables that stages hand to each other (see DESIGN.md).

Every stage validates its input against these and writes exactly these columns, so a change of
contract is one edit here and a test failure everywhere it matters.
"""

from __future__ import annotations

import pyarrow as pa

#: ``data/raw/samples.parquet`` - one row per sample (one image with its captions).
RAW_SAMPLES = pa.schema(
    [
        ("sample_id", pa.string()),  # 16 hex chars of sha256(image sha256 + captions); see ids.py
        ("source", pa.string()),  # the source's name in params
        ("source_key", pa.string()),  # where in the source: relative path, tar key, COCO id, URL
        ("image_sha256", pa.string()),  # hex digest of the image bytes
        ("image_path", pa.string()),  # path of the bytes in the content-addressed store
        ("image_bytes", pa.int64()),
        ("captions", pa.list_(pa.string())),  # as provided (normalised later, in preprocess)
        ("labels", pa.list_(pa.string())),  # labels provided by the source, possibly empty
        ("extra", pa.string()),  # JSON object of source-specific facts (coco_id, licence, ...)
    ]
)

#: ``*/quarantine.parquet`` - one row per input that left the pipeline, with why.
QUARANTINE = pa.schema(
    [
        ("sample_id", pa.string()),  # null when no sample could be formed (unreadable input)
        ("stage", pa.string()),
        ("source", pa.string()),
        ("source_key", pa.string()),
        ("reason", pa.string()),  # a short stable code, e.g. "truncated_image", "path_escape"
        ("detail", pa.string()),  # one human sentence
        ("evidence", pa.string()),  # JSON object: duplicate id and distance, score, threshold, ...
    ]
)
