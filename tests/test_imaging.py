"""Safe decoding, colour-mode handling, encoder copies and perceptual hashes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageFile

from cmrops.imaging import (
    REASONS,
    DecodeLimits,
    ImageRejected,
    bits_to_uint64,
    decode_image,
    dhash64,
    hamming64,
    image_hashes,
    phash64,
    resize_for_encoder,
    uint64_to_bits,
)
from tests.raw_helpers import (
    animated_gif,
    bad_images,
    encode,
    exif_rotated_jpeg,
    photo,
    png_16bit_rgb,
)


@pytest.fixture(scope="module")
def real_jpeg() -> bytes:
    return encode(photo(320, 240, seed=3), "JPEG", quality=90)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "name",
    [
        "truncated_jpeg",
        "truncated_jpeg_header",
        "truncated_png",
        "truncated_png_header",
        "zero_byte",
        "html_as_jpg",
        "bomb_header",
        "one_by_one",
        "hundred_thousand_by_one",
    ],
)
def test_bad_images_are_rejected_with_their_reason(real_jpeg: bytes, name: str) -> None:
    data, reason = bad_images(real_jpeg)[name]
    with pytest.raises(ImageRejected) as info:
        decode_image(data)
    assert info.value.reason == reason, info.value.detail
    assert info.value.reason in REASONS
    assert info.value.detail


def test_truncated_real_coco_jpeg(coco_mini: Path) -> None:
    first = json.loads((coco_mini / "pairs.jsonl").read_text().splitlines()[0])
    data = (coco_mini / first["image"]).read_bytes()
    decode_image(data)  # the whole file is fine
    for cut in (len(data) // 3, len(data) - 64):
        with pytest.raises(ImageRejected) as info:
            decode_image(data[:cut])
        assert info.value.reason == "truncated_image"


def test_small_image_over_a_low_pixel_cap_is_a_bomb() -> None:
    data = encode(photo(40, 40), "PNG")
    decode_image(data, DecodeLimits(max_pixels=1600))
    for cap in (1000, 1599, 100):  # Pillow warns between cap and 2x cap, errors above: both refuse
        with pytest.raises(ImageRejected) as info:
            decode_image(data, DecodeLimits(max_pixels=cap, min_side=1))
        assert info.value.reason == "decompression_bomb"
        assert info.value.evidence.get("max_pixels", cap) == cap


def test_pixel_cap_does_not_leak_into_pillow_globals() -> None:
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageRejected):
        decode_image(encode(photo(40, 40), "PNG"), DecodeLimits(max_pixels=100, min_side=1))
    assert before == Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decode_image(encode(photo(40, 40), "PNG"))


def test_degenerate_limits_come_from_params() -> None:
    data = encode(photo(200, 10), "PNG")
    with pytest.raises(ImageRejected, match="aspect"):
        decode_image(data, DecodeLimits(min_side=4, max_aspect=10))
    got = decode_image(data, DecodeLimits(min_side=4, max_aspect=25))
    assert (got.width, got.height) == (200, 10)
    with pytest.raises(ImageRejected, match="min_side"):
        decode_image(data, DecodeLimits(min_side=11, max_aspect=25))


def test_load_truncated_images_switched_on_elsewhere_is_refused(real_jpeg: bytes) -> None:
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
            decode_image(real_jpeg)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


# --------------------------------------------------------------------------- modes


def _rgb(data: bytes) -> np.ndarray:
    d = decode_image(data, DecodeLimits(min_side=1))
    assert d.image.mode == "RGB"
    return np.asarray(d.image)


def test_cmyk_jpeg_becomes_rgb() -> None:
    im = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    d = decode_image(encode(im, "JPEG", quality=95))
    px = np.asarray(d.image)[16, 16]
    assert d.mode == "CMYK"
    assert px[0] > 200
    assert px[1] < 60
    assert px[2] < 60


def test_16_bit_grey_png_is_scaled_not_clipped() -> None:
    arr = np.full((32, 32), 40000, np.uint16)
    arr[:, 16:] = 65535
    im16 = Image.fromarray(arr)
    assert im16.mode.startswith("I;16")
    data = encode(im16, "PNG")
    px = _rgb(data)
    assert abs(int(px[0, 0, 0]) - 40000 // 257) <= 1
    assert px[0, 31].tolist() == [255, 255, 255]


def test_16_bit_rgb_png_is_read() -> None:
    arr = (np.linspace(0, 65535, 32 * 32 * 3).reshape(32, 32, 3)).astype(">u2")
    px = _rgb(png_16bit_rgb(arr))
    assert px[-1, -1].tolist() == [255, 255, 255]
    assert px[0, 0].tolist() == [0, 0, 0]


def test_palette_png_becomes_rgb() -> None:
    im = photo(48, 48).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    d = decode_image(encode(im, "PNG"))
    assert d.mode == "P"
    assert np.array_equal(np.asarray(d.image), np.asarray(im.convert("RGB")))


def test_alpha_is_composited_on_white() -> None:
    im = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    im.paste((255, 0, 0, 255), (0, 0, 16, 32))
    px = _rgb(encode(im, "PNG"))
    assert px[5, 5].tolist() == [255, 0, 0]
    assert px[5, 25].tolist() == [255, 255, 255]  # transparent -> white, never black
    la = Image.new("LA", (32, 32), (0, 0))
    assert _rgb(encode(la, "PNG"))[0, 0].tolist() == [255, 255, 255]


def test_palette_with_transparency_is_composited_on_white() -> None:
    im = Image.new("P", (32, 32), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (0, 0, 16, 32))
    data = encode(im, "PNG", transparency=0)
    px = _rgb(data)
    assert px[5, 5].tolist() == [255, 0, 0]
    assert px[5, 25].tolist() == [255, 255, 255]


def test_animated_gif_uses_first_frame_and_counts_frames() -> None:
    d = decode_image(animated_gif(frames=3))
    assert d.n_frames == 3
    assert d.format == "GIF"
    px = np.asarray(d.image)[4, 4]
    assert px[0] > 200
    assert px[1] < 50
    assert px[2] < 50


def test_exif_orientation_is_applied() -> None:
    d = decode_image(exif_rotated_jpeg(64, 32, orientation=6))
    assert (d.width, d.height) == (32, 64)  # rotated 90 degrees: portrait now
    px = np.asarray(d.image)
    # orientation 6 = rotate 90 CW for display: the left (red) half ends on top
    assert px[4, 16, 0] > 150
    assert px[4, 16, 2] < 100
    assert px[60, 16, 2] > 150
    assert px[60, 16, 0] < 100


def test_webp_and_greyscale_decode() -> None:
    d = decode_image(encode(photo(64, 48), "WEBP", quality=90))
    assert d.format == "WEBP"
    assert d.image.mode == "RGB"
    g = decode_image(encode(photo(64, 48).convert("L"), "PNG"))
    assert g.mode == "L"
    assert g.image.mode == "RGB"


# --------------------------------------------------------------------------- resize and hashes


def test_resize_for_encoder_is_a_centre_square() -> None:
    im = Image.new("RGB", (300, 100), (0, 0, 255))
    im.paste((255, 0, 0), (100, 0, 200, 100))  # the centre third is red
    out = resize_for_encoder(im, 32)
    assert out.shape == (32, 32, 3)
    assert out.dtype == np.uint8
    assert (out[:, :, 0] > 200).all()
    assert (out[:, :, 2] < 50).all()


def test_bit_order_round_trip_and_hamming() -> None:
    rng = np.random.default_rng(0)
    bits = rng.random(64) > 0.5
    value = bits_to_uint64(bits)
    assert all(((value >> j) & 1) == bits[j] for j in range(64))
    assert np.array_equal(uint64_to_bits(value), bits)
    assert 0 <= value < 2**64
    assert np.uint64(value) == value
    assert hamming64(value, value ^ 0b1011) == 3


def test_phash_matches_imagehash_on_real_photos(coco_mini: Path) -> None:
    """Same recipe as ``imagehash.phash``: bit j = imagehash's matrix cell (j // 8, j % 8)."""
    lines = (coco_mini / "pairs.jsonl").read_text().splitlines()
    total = 0
    for line in lines[:60]:
        image = decode_image((coco_mini / json.loads(line)["image"]).read_bytes()).image
        ours = uint64_to_bits(phash64(image)).reshape(8, 8)
        theirs = imagehash.phash(image).hash
        total += int((ours != theirs).sum())
        assert (ours != theirs).sum() <= 2
        d_ours = uint64_to_bits(dhash64(image)).reshape(8, 8)
        assert (d_ours != imagehash.dhash(image).hash).sum() <= 2
    assert total <= 6  # identical bits on (nearly) every photo


def test_hashes_are_robust_to_reencoding_and_resizing() -> None:
    base = photo(256, 192, seed=11)
    variant = decode_image(encode(base.resize((200, 150)), "JPEG", quality=60)).image
    other = photo(256, 192, seed=12)
    p0, d0 = image_hashes(base)
    p1, d1 = image_hashes(variant)
    p2, _ = image_hashes(other)
    assert hamming64(p0, p1) <= 6
    assert hamming64(d0, d1) <= 8
    assert hamming64(p0, p2) > 12
