"""Column contracts of the tables that stages hand to each other (see DESIGN.md).

Every stage validates its input against these and writes exactly these columns, so a change of
contract is one edit here and a test failure everywhere it matters.
"""

from __future__ import annotations

import pyarrow as pa

#: ``data/raw/samples.parquet`` - one row per sample (one image, video or audio clip with its
#: captions). The ``image_*`` columns name the media file whatever its kind (``media``).
RAW_SAMPLES = pa.schema(
    [
        ("sample_id", pa.string()),  # 16 hex chars of sha256(media sha256 + captions); see ids.py
        ("source", pa.string()),  # the source's name in params
        ("source_key", pa.string()),  # where in the source: relative path, tar key, COCO id, URL
        ("image_sha256", pa.string()),  # hex digest of the image bytes
        ("image_path", pa.string()),  # path of the bytes in the content-addressed store
        ("image_bytes", pa.int64()),
        ("captions", pa.list_(pa.string())),  # as provided (normalised later, in preprocess)
        ("labels", pa.list_(pa.string())),  # labels provided by the source, possibly empty
        ("extra", pa.string()),  # JSON object of source-specific facts (coco_id, licence, ...)
        ("media", pa.string()),  # "image" | "video" | "audio" (collect.media; null read as image)
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

#: ``data/interim/samples.parquet`` - the raw columns plus what preprocess measured, sorted by
#: ``sample_id``. Hashes are 64-bit ints whose bit j is ``(value >> j) & 1`` (see imaging.py).
INTERIM_SAMPLES = pa.schema(
    [
        *RAW_SAMPLES,
        ("width", pa.int32()),  # after EXIF orientation
        ("height", pa.int32()),
        ("format", pa.string()),  # Pillow format name: JPEG, PNG, GIF, WEBP, ...
        ("n_frames", pa.int32()),  # > 1 for animated images (the first frame is used)
        ("phash", pa.uint64()),  # DCT pHash (imagehash.phash recipe)
        ("dhash", pa.uint64()),  # difference hash (imagehash.dhash recipe)
        ("caption_simhash", pa.uint64()),  # SimHash of all normalised captions (text.py)
        ("captions_norm", pa.list_(pa.string())),  # normalised, empty ones dropped
        ("caption_chars_cut", pa.int64()),  # characters removed by the length cap, all captions
        ("token_counts", pa.list_(pa.int32())),  # per normalised caption, no special tokens
        ("feature_row", pa.int64()),  # row in features/{image,text}.npy; -1 without embeddings
        # video and audio (null for images): the "image" columns above then hold the frame size
        # (0 x 0 for audio), the container / audio format, the keyframes used (0 for audio) and
        # the media fingerprint (video: majority vote of the keyframes' hashes; audio: hashes of
        # the log-mel spectrogram) - see cmrops/media.
        ("duration_s", pa.float64()),
        ("media_info", pa.string()),  # JSON object: codec, native fps / sample rate, channels
    ]
)

#: ``data/raw/synthetic_truth.parquet`` - one row per defect the synthetic source planted, so the
#: stages that should catch it (collect, preprocess, clean) can be scored. Empty when no
#: synthetic source ran.
SYNTHETIC_TRUTH = pa.schema(
    [
        ("source", pa.string()),
        ("source_key", pa.string()),  # the planted record
        ("defect", pa.string()),  # exact_copy, exact_dup, near_copy, truncated, zero_byte, ...
        ("original_source_key", pa.string()),  # copied from / captions taken from; else null
        ("sample_id", pa.string()),  # its sample id when collect kept it, else null
        ("original_sample_id", pa.string()),  # the original's sample id, when kept
        ("collect_reason", pa.string()),  # collect's quarantine reason, null when kept
        ("detail", pa.string()),  # JSON object: transform and its parameters, bytes kept, ...
    ]
)

#: ``data/labelled/labels.parquet`` - the effective labels, one row per (sample_id, label), sorted
#: by (sample_id, label). Precedence is per sample: reviewed > manual > auto (see stages/label.py).
LABELS = pa.schema(
    [
        ("sample_id", pa.string()),
        ("label", pa.string()),  # a vocabulary label (data/labelled/vocabulary.json)
        ("source", pa.string()),  # "reviewed" | "manual" | "auto"
        ("method", pa.string()),  # "review" | "manual" | "provided" | "keyword" | "zeroshot"
        ("confidence", pa.float64()),  # 1.0 for provided / manual / review
    ]
)

#: ``data/labelled/evidence.parquet`` - every candidate label of every method before resolution,
#: sorted by (sample_id, label, source, method). Only vocabulary labels; unknown ones are counted
#: in the stage's metrics.
LABEL_EVIDENCE = pa.schema(
    [
        ("sample_id", pa.string()),
        ("label", pa.string()),
        ("source", pa.string()),
        ("method", pa.string()),
        ("confidence", pa.float64()),
        ("passed", pa.bool_()),  # met its method's threshold (always true for human labels)
        ("selected", pa.bool_()),  # this row is the one written to labels.parquet
        ("detail", pa.string()),  # JSON object: file and line, captions matched, similarity, ...
    ]
)

#: ``data/labelled/sample_labels.parquet`` - one row per input sample (none dropped here), sorted
#: by sample_id: which source decided its labels and whether it waits in the review queue.
LABEL_SAMPLES = pa.schema(
    [
        ("sample_id", pa.string()),
        ("decided_by", pa.string()),  # "reviewed" | "manual" | "auto" | "none" (no label at all)
        ("labels", pa.list_(pa.string())),  # the effective labels, sorted (maybe empty)
        ("n_labels", pa.int32()),
        ("review_rank", pa.int32()),  # 1-based position in review_queue.csv; null when not queued
        ("review_reason", pa.string()),  # disagree | no_label | uncertain; null when not queued
    ]
)

#: ``data/clean/groups.parquet`` - every sample of a duplicate group (image or caption), kept or
#: dropped, sorted by sample_id, so each duplicate decision can be traced. Group ids are the
#: smallest sample_id of the group; null when the sample is in no group of that kind.
CLEAN_GROUPS = pa.schema(
    [
        ("sample_id", pa.string()),
        ("image_group", pa.string()),  # identical bytes or pHash (+ confirmations) near-duplicates
        ("caption_group", pa.string()),  # caption SimHash near-duplicates (reported, never dropped)
        ("kept", pa.bool_()),  # false: quarantined by clean (any rule; see quarantine.parquet)
    ]
)

#: ``data/clean/overrides.parquet`` - the latest quarantine verdict per sample of the project's
#: review answer log (:mod:`cmrops.answers`) that clean applied, sorted by sample_id: a person
#: confirmed or overruled the quarantine of a sample by a rule; an overruled sample is not
#: quarantined by that rule (``outcome`` says where it ended up this run).
CLEAN_OVERRIDES = pa.schema(
    [
        ("sample_id", pa.string()),
        ("reason", pa.string()),  # the rule judged
        ("verdict", pa.string()),  # confirm | overrule
        ("why", pa.string()),
        ("who", pa.string()),
        ("answered_at", pa.string()),  # ISO 8601, UTC
        ("answer_id", pa.string()),
        ("rule_flags", pa.bool_()),  # the rule still flags the sample this run
        ("outcome", pa.string()),  # kept | quarantined
        ("quarantined_by", pa.string()),  # the rule that claimed it this run (null: kept)
    ]
)

#: ``data/split/assignments.parquet`` - one row per clean sample, sorted by sample_id.
ASSIGNMENTS = pa.schema(
    [
        ("sample_id", pa.string()),
        ("split", pa.string()),  # train / val / test (ratio) or query / database (hashing)
        ("in_train", pa.bool_()),  # the sample trains the model (ratio: split == "train")
        ("group_id", pa.string()),  # near-duplicate group (smallest sample_id); never straddles
        ("protocol", pa.string()),  # the protocol's name in params (or "imported:<file>")
        ("seed", pa.int64()),
    ]
)

#: ``data/codes/rows.parquet`` - the sample of every code row, the same for every model:
#: row ``row`` of each ``<method>-<bits>/{image,text}_<role>.npy`` is sample ``sample_id``.
#: Query rows first, then database rows, each in ``sample_id`` order, ``row`` = 0..n-1 per role.
CODE_ROWS = pa.schema(
    [
        ("role", pa.string()),  # "query" | "database"
        ("row", pa.int64()),
        ("sample_id", pa.string()),
    ]
)

#: ``data/codes/training_samples.parquet`` - the samples every model of the run was fitted on
#: (``train``) or selected on (``val``), sorted by (role, sample_id): what a withdrawal's impact
#: list reads to name the models that learned from a sample.
TRAINING_SAMPLES = pa.schema(
    [
        ("role", pa.string()),  # "train" | "val"
        ("sample_id", pa.string()),
    ]
)
