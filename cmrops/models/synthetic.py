"""Synthetic paired embeddings with label structure, for tests, benchmarks and the GPU check.

Each sample has one or two of ``n_labels`` labels; its image embedding is the sum of its labels'
image centroids plus Gaussian noise, its text embedding the same with separate text centroids
(and noise of its own), both L2-normalised like the preprocess features. ``noise`` sets how hard
the retrieval is (about 1: labels clearly recoverable but not trivially).
"""

from __future__ import annotations

import numpy as np

from cmrops.models.loop import PairedData


def synthetic_pairs(
    n: int,
    n_labels: int = 10,
    image_dim: int = 64,
    text_dim: int = 48,
    noise: float = 1.0,
    seed: int = 0,
    multi_label: float = 0.3,
) -> PairedData:
    """``n`` paired samples; ``multi_label`` is the share of samples with a second label."""
    rng = np.random.default_rng(seed)
    centroids_i = rng.standard_normal((n_labels, image_dim)) / np.sqrt(image_dim)
    centroids_t = rng.standard_normal((n_labels, text_dim)) / np.sqrt(text_dim)
    labels = np.zeros((n, n_labels), bool)
    labels[np.arange(n), rng.integers(0, n_labels, n)] = True
    second = rng.random(n) < multi_label
    labels[np.flatnonzero(second), rng.integers(0, n_labels, int(second.sum()))] = True
    lf = labels.astype(np.float64)
    image = lf @ centroids_i + noise * rng.standard_normal((n, image_dim)) / np.sqrt(image_dim)
    text = lf @ centroids_t + noise * rng.standard_normal((n, text_dim)) / np.sqrt(text_dim)
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return PairedData(image.astype(np.float32), text.astype(np.float32), labels)


def subset(data: PairedData, rows: np.ndarray) -> PairedData:
    return PairedData(
        data.image[rows], data.text[rows], None if data.labels is None else data.labels[rows]
    )


COLOURS = {"red": (220, 30, 30), "blue": (30, 40, 220)}
THINGS = ("bus", "cat", "dog")


def synthetic_images(
    n: int, size: int = 32, seed: int = 0
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``n`` pictures with captions and labels for fine-tuning an image-text encoder: the
    colour (red/blue) and the stripe width (one per thing: bus/cat/dog) follow the caption
    ("a photo of the red cat"); labels are its two words, multi-hot over ``COLOURS + THINGS``.
    Returns ``(uint8 (n, size, size, 3), captions, bool (n, 5))``."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.zeros((n, len(COLOURS) + len(THINGS)), bool)
    captions = []
    cols = np.arange(size) * 32 // size  # stripe pattern defined at 32 px, scaled to size
    for i in range(n):
        c, t = i % 2, (i // 2) % 3
        colour = list(COLOURS)[c]
        img = rng.integers(0, 40, (size, size, 3)).astype(np.int32) + np.array(COLOURS[colour]) // 2
        img[:, (cols // (2 + 2 * t)) % 2 == 0] += 90
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
        captions.append(f"a photo of the {colour} {THINGS[t]}")
        labels[i, c] = labels[i, len(COLOURS) + t] = True
    return images, captions, labels
