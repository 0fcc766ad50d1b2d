"""The built-in synthetic source: seeded rendered scenes, with known defects planted in them.

``n`` records are generated, one per slot. Most slots are clean scenes (see
:mod:`cmrops.sources.scenes`: shapes, colours, sizes, counts, positions, backgrounds; 1-5
captions; labels = shape and colour names). ``round(rate * n)`` slots of each defect kind are
placed at random (never slot 0); a defect derived from an *original* always comes after it:

============== ======================================================== ===================
defect         what is planted                                          caught by
============== ======================================================== ===================
exact_copy     same bytes as an earlier clean sample, new captions      clean (exact dup)
exact_dup      same bytes and same captions                             collect (duplicate)
near_copy      re-encoded at low JPEG quality, resized, cropped 3-8 %   clean (near dup)
               or brightened copy of an earlier sample, new captions
truncated      a fresh image whose file is cut to 20-80 % of its bytes  preprocess
zero_byte      a fresh sample whose file is empty                       collect (empty_file)
swapped        a fresh image with the captions of an earlier sample     clean (mismatch)
               that shows other shapes/colours (labels stay the image's)
empty_caption  a fresh image whose captions are empty or blank          preprocess / clean
noise_image    white noise or a blurred colour field, generic caption   clean (off-topic)
============== ======================================================== ===================

The source records each planted defect in :attr:`SyntheticSource.truth` while it yields; the
collect stage writes them (with sample ids) to ``synthetic_truth.parquet``. Everything is a pure
function of the seed: slot ``i`` draws from ``numpy.random.default_rng([seed, i, ...])``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from cmrops.sources import scenes
from cmrops.sources.base import RawItem, Record

NEEDS_ORIGINAL = frozenset({"exact_copy", "exact_dup", "near_copy", "swapped"})


@dataclass(frozen=True)
class DefectRates:
    """Fraction of the ``n`` records planted with each defect (see the module table)."""

    exact_copy: float = 0.02
    exact_dup: float = 0.01
    near_copy: float = 0.04
    truncated: float = 0.01
    zero_byte: float = 0.005
    swapped: float = 0.03
    empty_caption: float = 0.01
    noise_image: float = 0.02

    def __post_init__(self) -> None:
        for f in fields(self):
            rate = getattr(self, f.name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"defect rate {f.name}={rate} must lie in [0, 1]")
        if sum(self.as_dict().values()) > 0.9:
            raise ValueError("defect rates add up to more than 0.9; leave room for clean samples")

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class SyntheticConfig:
    """How many scenes, how they look, and what is planted."""

    n: int = 200
    seed: int = 0
    min_size: int = 96
    max_size: int = 160
    min_captions: int = 1
    max_captions: int = 5
    jpeg_fraction: float = 0.7
    defects: DefectRates = field(default_factory=DefectRates)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n={self.n}: need at least one synthetic sample")
        if not 16 <= self.min_size <= self.max_size:
            raise ValueError("need 16 <= min_size <= max_size")
        if not 1 <= self.min_captions <= self.max_captions:
            raise ValueError("need 1 <= min_captions <= max_captions")
        if not 0.0 <= self.jpeg_fraction <= 1.0:
            raise ValueError("jpeg_fraction must lie in [0, 1]")


@dataclass(frozen=True)
class PlantedDefect:
    """Ground truth of one planted defect."""

    source_key: str
    defect: str
    original_source_key: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class _Base:
    scene: scenes.Scene
    image: Image.Image
    data: bytes
    captions: tuple[str, ...]


class SyntheticSource:
    """Deterministic stream of synthetic samples; ``truth`` fills in as it is iterated."""

    def __init__(self, name: str, config: SyntheticConfig) -> None:
        self.name = name
        self.config = config
        self.plan, self.originals = self._plan()
        self.truth: list[PlantedDefect] = []

    def size_hint(self) -> int | None:
        return self.config.n

    def __iter__(self) -> Iterator[Record]:
        self.truth = []
        for slot, kind in enumerate(self.plan):
            yield self._base_item(slot) if kind == "clean" else self._defect_item(slot, kind)

    # -- plan -----------------------------------------------------------------------------------

    def _plan(self) -> tuple[list[str], dict[int, int]]:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 0x5EED])
        kinds = [k for k, rate in cfg.defects.as_dict().items() for _ in range(round(rate * cfg.n))]
        if len(kinds) > cfg.n - 1:
            raise ValueError(f"n={cfg.n} is too small for the defect rates; raise n")
        plan = ["clean"] * cfg.n
        slots = rng.choice(np.arange(1, cfg.n), size=len(kinds), replace=False) if kinds else []
        for slot, kind in zip(slots, rng.permutation(np.array(kinds, dtype=object)), strict=True):
            plan[int(slot)] = str(kind)
        originals: dict[int, int] = {}
        clean: list[int] = []
        for slot, kind in enumerate(plan):
            if kind == "clean":
                clean.append(slot)
            elif kind in NEEDS_ORIGINAL:
                originals[slot] = self._pick_original(rng, slot, kind, clean)
        return plan, originals

    def _pick_original(
        self, rng: np.random.Generator, slot: int, kind: str, clean: list[int]
    ) -> int:
        choice = clean[int(rng.integers(len(clean)))]
        if kind == "swapped":  # a donor whose scene shows something else
            own = self._scene(slot).labels()
            for _ in range(20):
                if self._scene(choice).labels() != own:
                    break
                choice = clean[int(rng.integers(len(clean)))]
        return choice

    # -- generation -------------------------------------------------------------------------------

    def _key(self, slot: int, ext: str) -> str:
        return f"syn-{slot:06d}.{ext}"

    def _scene_rng(self, slot: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, slot, 1])

    def _scene(self, slot: int) -> scenes.Scene:
        cfg = self.config
        return scenes.sample_scene(
            self._scene_rng(slot), cfg.min_size, cfg.max_size, cfg.jpeg_fraction
        )

    def _base(self, slot: int) -> _Base:
        cfg = self.config
        rng = self._scene_rng(slot)
        scene = scenes.sample_scene(rng, cfg.min_size, cfg.max_size, cfg.jpeg_fraction)
        image = scenes.render(scene)
        k = int(rng.integers(cfg.min_captions, cfg.max_captions + 1))
        caps = tuple(scenes.captions(scene, rng, k))
        return _Base(scene, image, scenes.encode(image, scene.fmt, scene.quality), caps)

    def _base_item(self, slot: int) -> RawItem:
        b = self._base(slot)
        return RawItem(
            self.name, self._key(slot, b.scene.ext), b.captions, b.scene.labels(), data=b.data
        )

    def _new_captions(self, base: _Base, rng: np.random.Generator) -> tuple[str, ...]:
        cfg = self.config
        for _ in range(10):
            k = int(rng.integers(cfg.min_captions, cfg.max_captions + 1))
            caps = tuple(scenes.captions(base.scene, rng, k))
            if caps != base.captions:
                return caps
        return (*base.captions[:-1], base.captions[-1] + ".")

    def _defect_item(self, slot: int, kind: str) -> RawItem:
        rng = np.random.default_rng([self.config.seed, slot, 2])
        orig = self.originals.get(slot)
        base = self._base(orig if orig is not None and kind != "swapped" else slot)
        scene = base.scene
        data, caps, labels = base.data, base.captions, scene.labels()
        ext, detail = scene.ext, {}
        if kind == "exact_copy":
            caps = self._new_captions(base, rng)
        elif kind == "near_copy":
            data, ext, detail = _near_copy(base, rng)
            caps = self._new_captions(base, rng)
        elif kind == "truncated":
            keep = max(16, int(len(data) * rng.uniform(0.2, 0.8)))
            detail = {"kept_bytes": keep, "full_bytes": len(data)}
            data = data[:keep]
        elif kind == "zero_byte":
            data = b""
        elif kind == "swapped":
            assert orig is not None
            caps = self._base(orig).captions
        elif kind == "empty_caption":
            caps = ("",) if rng.random() < 0.5 else (" ",) * int(rng.integers(1, 3))
        elif kind == "noise_image":
            img = scenes.noise_image(rng, scene.width, scene.height)
            data = scenes.encode(img, scene.fmt, scene.quality)
            caps = (str(rng.choice(scenes.GENERIC_CAPTIONS)),)
            labels = ()
        key = self._key(slot, ext)
        original = self._key(orig, self._scene(orig).ext) if orig is not None else None
        self.truth.append(PlantedDefect(key, kind, original, detail))
        return RawItem(self.name, key, caps, labels, data=data)


def _near_copy(base: _Base, rng: np.random.Generator) -> tuple[bytes, str, dict[str, Any]]:
    """A visually near-identical variant of ``base``: bytes, extension, what was done."""
    img, scene = base.image, base.scene
    how = str(rng.choice(["reencode", "resize", "crop", "brighten"]))
    if how == "reencode":
        quality = int(rng.integers(25, 61))
        return scenes.encode(img, "JPEG", quality), "jpg", {"transform": how, "quality": quality}
    if how == "resize":
        scale = float(rng.choice([rng.uniform(0.6, 0.85), rng.uniform(1.2, 1.5)]))
        size = (max(16, round(img.width * scale)), max(16, round(img.height * scale)))
        out = img.resize(size, Image.Resampling.LANCZOS)
        detail: dict[str, Any] = {"transform": how, "scale": round(scale, 3)}
    elif how == "crop":
        frac = rng.uniform(0.03, 0.08, size=4)
        w, h = img.size
        box = (
            round(w * frac[0]),
            round(h * frac[1]),
            w - round(w * frac[2]),
            h - round(h * frac[3]),
        )
        out = img.crop(box)
        detail = {"transform": how, "box": list(box)}
    else:
        factor = float(rng.uniform(1.15, 1.4))
        out = ImageEnhance.Brightness(img).enhance(factor)
        detail = {"transform": how, "factor": round(factor, 3)}
    return scenes.encode(out, scene.fmt, scene.quality), scene.ext, detail
