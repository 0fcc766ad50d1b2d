"""Rendered shape scenes with templated captions and multi-labels (for the synthetic source).

A :class:`Scene` is drawn from a numpy ``Generator``: 1-3 groups of identical shapes (1-4 shapes
in all), each group one shape kind, colour and size, placed at random without much overlap, on a
background that is plain, a gradient, striped, checkered or dotted. Rendering is a pure function
of the scene, so the same seed gives the same pixels and, with the same Pillow, the same bytes.

Vocabulary (labels are the shape and colour names of the objects, never of the background):

- shapes: circle, square, triangle, star, diamond, hexagon, cross, ring
- colours: red, green, blue, yellow, orange, purple, pink, brown, black, white, grey, cyan
- sizes (captions only): small, medium, large; counts one to four
- backgrounds (captions only): plain, gradient, striped, checkered, dotted
"""

from __future__ import annotations

import io
import itertools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross", "ring")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 200),
    "yellow": (240, 212, 30),
    "orange": (250, 135, 20),
    "purple": (128, 60, 170),
    "pink": (240, 128, 190),
    "brown": (125, 80, 40),
    "black": (20, 20, 20),
    "white": (246, 246, 246),
    "grey": (128, 128, 128),
    "cyan": (30, 200, 215),
}
SIZES = {"small": 0.09, "medium": 0.14, "large": 0.2}  # radius / min(width, height)
BACKGROUNDS = ("plain", "gradient", "striped", "checkered", "dotted")
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
GENERIC_CAPTIONS = (
    "an image",
    "a photo",
    "a picture",
    "untitled",
    "image of something",
    "a texture",
    "some picture",
)


@dataclass(frozen=True)
class Group:
    """``count`` identical shapes."""

    shape: str
    colour: str
    size: str
    count: int


@dataclass(frozen=True)
class Scene:
    """Everything needed to render one image and describe it."""

    width: int
    height: int
    background: str
    bg_colours: tuple[str, str]
    groups: tuple[Group, ...]
    placements: tuple[tuple[float, float], ...]  # object centres (fractions), groups in order
    angle: float  # stripe / gradient direction, degrees
    period: int  # stripe / checker / dot period in pixels
    fmt: str  # "JPEG" or "PNG"
    quality: int

    @property
    def ext(self) -> str:
        return "jpg" if self.fmt == "JPEG" else "png"

    def labels(self) -> tuple[str, ...]:
        """Sorted distinct shape and colour names of the objects."""
        return tuple(sorted({g.shape for g in self.groups} | {g.colour for g in self.groups}))


def sample_scene(
    rng: np.random.Generator, min_size: int, max_size: int, jpeg_fraction: float
) -> Scene:
    """Draw a random scene."""
    width, height = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    total = int(rng.choice([1, 1, 2, 2, 3, 4]))
    n_groups = int(rng.integers(1, min(total, 3) + 1))
    counts = _split_count(rng, total, n_groups)
    kinds = rng.choice(len(SHAPES), size=n_groups, replace=False)
    names = list(COLOURS)
    colours = rng.choice(len(names), size=n_groups, replace=False)
    groups = tuple(
        Group(SHAPES[int(k)], names[int(c)], str(rng.choice(list(SIZES))), int(n))
        for k, c, n in zip(kinds, colours, counts, strict=True)
    )
    free = [n for n in names if n not in {g.colour for g in groups}]
    bg = rng.choice(len(free), size=2, replace=False)
    placements = _place(rng, groups, width, height)
    fmt = "JPEG" if rng.random() < jpeg_fraction else "PNG"
    return Scene(
        width,
        height,
        str(rng.choice(BACKGROUNDS)),
        (free[int(bg[0])], free[int(bg[1])]),
        groups,
        placements,
        float(rng.choice([0, 45, 90, 135])),
        int(rng.integers(6, 20)),
        fmt,
        int(rng.integers(85, 96)),
    )


def _split_count(rng: np.random.Generator, total: int, parts: int) -> list[int]:
    cuts = sorted(int(c) for c in rng.choice(np.arange(1, total), size=parts - 1, replace=False))
    bounds = [0, *cuts, total]
    return [b - a for a, b in itertools.pairwise(bounds)]


def _place(
    rng: np.random.Generator, groups: tuple[Group, ...], width: int, height: int
) -> tuple[tuple[float, float], ...]:
    side = min(width, height)
    placed: list[tuple[float, float, float]] = []
    for g in groups:
        r = SIZES[g.size] * side
        for _ in range(g.count):
            best = None
            for _try in range(30):
                x = float(rng.uniform(r, width - r))
                y = float(rng.uniform(r, height - r))
                if all(math.hypot(x - px, y - py) > (r + pr) * 0.9 for px, py, pr in placed):
                    best = (x, y)
                    break
                best = best or (x, y)
            assert best is not None
            placed.append((best[0], best[1], r))
    return tuple((x / width, y / height) for x, y, _ in placed)


# -- rendering ---------------------------------------------------------------------------------


def render(scene: Scene) -> Image.Image:
    """Draw ``scene`` as an RGB image."""
    img = Image.fromarray(_background(scene), "RGB")
    draw = ImageDraw.Draw(img)
    side = min(scene.width, scene.height)
    centres = iter(scene.placements)
    for g in scene.groups:
        r = SIZES[g.size] * side
        for _ in range(g.count):
            fx, fy = next(centres)
            _draw_shape(draw, g.shape, fx * scene.width, fy * scene.height, r, COLOURS[g.colour])
    return img


def _background(scene: Scene) -> np.ndarray:
    h, w = scene.height, scene.width
    c1, c2 = (np.array(COLOURS[c], dtype=np.uint8) for c in scene.bg_colours)
    if scene.background == "plain":
        return np.broadcast_to(c1, (h, w, 3)).copy()
    yy, xx = np.ogrid[0:h, 0:w]
    theta = math.radians(scene.angle)
    along = xx * math.cos(theta) + yy * math.sin(theta)  # (h, w) by broadcasting
    if scene.background == "gradient":
        t = ((along - along.min()) / max(float(np.ptp(along)), 1.0)).astype(np.float32)[..., None]
        out = c1.astype(np.float32) * (1 - t) + c2.astype(np.float32) * t
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
    p = scene.period
    if scene.background == "striped":
        mask = (along // p) % 2 == 1
    elif scene.background == "checkered":
        mask = ((xx // p) + (yy // p)) % 2 == 1
    else:  # dotted
        mask = np.hypot((xx % p) - p / 2, (yy % p) - p / 2) < p / 4
    return np.where(mask[..., None], c2, c1).astype(np.uint8)


def _polygon(x: float, y: float, r: float, n: int, start: float) -> list[tuple[float, float]]:
    angles = [start + 2 * math.pi * i / n for i in range(n)]
    return [(x + r * math.cos(a), y + r * math.sin(a)) for a in angles]


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    x: float,
    y: float,
    r: float,
    colour: tuple[int, int, int],
) -> None:
    box = (x - r, y - r, x + r, y + r)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r * 0.35)))
    elif shape == "square":
        s = r * 0.85
        draw.rectangle((x - s, y - s, x + s, y + s), fill=colour)
    elif shape == "diamond":
        draw.polygon(_polygon(x, y, r, 4, -math.pi / 2), fill=colour)
    elif shape == "triangle":
        draw.polygon(_polygon(x, y, r, 3, -math.pi / 2), fill=colour)
    elif shape == "hexagon":
        draw.polygon(_polygon(x, y, r, 6, 0.0), fill=colour)
    elif shape == "star":
        outer = _polygon(x, y, r, 5, -math.pi / 2)
        inner = _polygon(x, y, r * 0.42, 5, -math.pi / 2 + math.pi / 5)
        draw.polygon([p for pair in zip(outer, inner, strict=True) for p in pair], fill=colour)
    elif shape == "cross":
        t = r * 0.32
        draw.rectangle((x - r, y - t, x + r, y + t), fill=colour)
        draw.rectangle((x - t, y - r, x + t, y + r), fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def encode(img: Image.Image, fmt: str, quality: int = 90) -> bytes:
    """Encode deterministically (no timestamps or optional metadata)."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def noise_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """An off-topic image: white noise, or a blurry random colour field."""
    if rng.random() < 0.5:
        return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
    small = rng.integers(
        0, 256, size=(int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3), dtype=np.uint8
    )
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


# -- captions ----------------------------------------------------------------------------------


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s")


def _group_phrase(g: Group, with_size: bool) -> str:
    words = [g.size] if with_size else []
    words.append(g.colour)
    if g.count == 1:
        article = "an" if words[0][0] in "aeiou" else "a"
        return " ".join([article, *words, g.shape])
    return " ".join([NUMBERS[g.count], *words, _plural(g.shape)])


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _background_phrase(scene: Scene) -> str:
    a, b = scene.bg_colours
    return {
        "plain": f"a plain {a} background",
        "gradient": f"a {a} to {b} gradient",
        "striped": f"a {a} and {b} striped background",
        "checkered": f"a {a} and {b} checkered background",
        "dotted": f"a {a} background with {b} dots",
    }[scene.background]


def _position(fx: float, fy: float) -> str:
    col = "left" if fx < 0.36 else "right" if fx > 0.64 else ""
    row = "top" if fy < 0.36 else "bottom" if fy > 0.64 else ""
    if not col and not row:
        return "in the middle"
    if col and row:
        return f"in the {row} {col} corner"
    return f"on the {col or row}"


TEMPLATES = (
    "{objs} on {bg}",
    "{objs} against {bg}",
    "a picture of {objs} on {bg}",
    "there {be} {objs} on {bg}",
    "{bg} with {objs}",
    "{objs}",
    "an image showing {objs}",
    "{total} on {bg}: {objs}",
    "a drawing of {objs}",
)


def captions(scene: Scene, rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct captions of ``scene`` in varied phrasings (fewer if phrasings run out)."""
    total = sum(g.count for g in scene.groups)
    out: list[str] = []
    for _ in range(n * 4):
        if len(out) == n:
            break
        groups = list(scene.groups)
        rng.shuffle(groups)  # type: ignore[arg-type]
        objs = _join([_group_phrase(g, bool(rng.random() < 0.4)) for g in groups])
        if total == 1 and rng.random() < 0.3:
            g = scene.groups[0]
            text = f"{_group_phrase(g, False)} {_position(*scene.placements[0])}"
        else:
            template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
            text = template.format(
                objs=objs,
                bg=_background_phrase(scene),
                be="is" if groups[0].count == 1 else "are",
                total="a shape" if total == 1 else f"{NUMBERS[total]} shapes",
            )
        if rng.random() < 0.3:
            text = text[0].upper() + text[1:] + "."
        if text not in out:
            out.append(text)
    return out
