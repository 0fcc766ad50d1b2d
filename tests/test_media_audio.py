"""cmrops.media.audio: real decoding (soundfile, and PyAV for AAC), every rejection reason that
can be provoked, log-mel, the audio fingerprint and the logmel-stats embedding. Clips are 1 s at
16 kHz unless said."""

from __future__ import annotations

import csv
import functools
import itertools
import json
import math

import numpy as np
import pytest

from cmrops.imaging import hamming64
from cmrops.media import (
    LOGMEL_STATS_NAME,
    REASONS,
    AudioLimits,
    DecodedAudio,
    MediaRejected,
    audio_hashes,
    decode_audio,
    log_mel,
    logmel_stats,
)
from cmrops.media import synthetic as syn
from cmrops.media.audio import _hz_to_mel, _mel_to_hz, mel_filterbank, resample, spectrogram_picture

SR = 16_000


def reject(data: bytes, limits: AudioLimits | None = None) -> MediaRejected:
    with pytest.raises(MediaRejected) as info:
        decode_audio(data, limits)
    err = info.value
    assert err.reason in REASONS
    what, _, change = err.detail.partition("; ")  # one sentence: what is wrong; what to do
    assert what, err.detail
    assert change, err.detail
    json.dumps(err.evidence)
    return err


def peak_hz(wave: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spec) * sr / len(wave))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_rate": 0},
        {"max_duration_s": 0},
        {"min_duration_s": -1},
        {"min_duration_s": 700},
        {"max_channels": 0},
    ],
)
def test_limits_are_validated(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AudioLimits(**kwargs)


# -- synthetic sounds ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", syn.TONE_KINDS)
def test_tones_are_seeded_and_scaled(kind: str) -> None:
    a = syn.tone(kind, seed=3)
    assert a.dtype == np.float32
    assert a.shape == (SR,)
    assert np.array_equal(a, syn.tone(kind, seed=3))
    assert not np.array_equal(a, syn.tone(kind, seed=4))  # the phase (or the noise) moves
    assert 0.3 < float(np.abs(a).max()) <= 1.0


@pytest.mark.parametrize(("kind", "rising"), [("chirp_up", True), ("chirp_down", False)])
def test_chirps_sweep_the_stated_way(kind: str, rising: bool) -> None:
    w = syn.tone(kind, freq=800.0, seconds=2.0)
    first, last = peak_hz(w[: SR // 4], SR), peak_hz(w[-SR // 4 :], SR)
    lo, hi = (first, last) if rising else (last, first)
    assert lo == pytest.approx(400 * 2 ** (1 / 8), rel=0.1)  # the sweep at 1/8 and 7/8 of it
    assert hi == pytest.approx(1600 * 2 ** (-1 / 8), rel=0.1)


@pytest.mark.parametrize(
    ("kind", "freq", "caption"),
    [
        ("tone", 1200, "a high pitched tone"),
        ("tone", 220, "a low pitched tone"),
        ("tone", 440, "a steady tone"),
        ("chirp_up", 200, "a low rising chirp"),
        ("chirp_down", 800, "a high falling chirp"),
        ("noise", 200, "white noise"),
        ("beeps", 700, "high pitched beeps"),
        ("beeps", 400, "a series of beeps"),
    ],
)
def test_audio_caption(kind: str, freq: float, caption: str) -> None:
    assert syn.audio_caption(kind, freq) == caption


# -- decoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "subtype", "tolerance"),
    [
        ("WAV", "PCM_16", 0),
        ("FLAC", "PCM_16", 0),
        ("OGG", "VORBIS", 0),
        ("MP3", "MPEG_LAYER_III", 0),
    ],
)
def test_round_trip_with_soundfile(fmt: str, subtype: str, tolerance: int) -> None:
    wave = syn.tone("tone", freq=1000.0)
    a = decode_audio(syn.encode_audio(wave, SR, fmt))
    assert isinstance(a, DecodedAudio)
    assert (a.format, a.subtype, a.channels, a.native_rate, a.sample_rate) == (
        fmt,
        subtype,
        1,
        SR,
        SR,
    )
    assert a.wave.dtype == np.float32
    assert a.wave.flags.c_contiguous
    assert a.wave.shape == (SR,)
    assert a.duration_s == 1.0
    assert peak_hz(a.wave, SR) == pytest.approx(1000.0, abs=2)
    if fmt in ("WAV", "FLAC"):  # lossless: the PCM-16 samples themselves
        assert np.abs(a.wave - wave).max() < 1 / 2**14


def test_m4a_is_read_through_pyav() -> None:
    a = decode_audio(syn.encode_m4a(syn.tone("tone", freq=1000.0), SR))
    assert (a.format, a.subtype, a.channels, a.native_rate) == ("M4A", "AAC", 1, SR)
    assert a.duration_s == pytest.approx(1.0, abs=0.1)  # AAC priming/padding frames
    assert peak_hz(a.wave, SR) == pytest.approx(1000.0, abs=3)


@pytest.mark.parametrize(("container", "fmt"), [("mp4", "MP4"), ("mkv", "MATROSKA")])
def test_the_sound_of_a_video(container: str, fmt: str) -> None:
    video = syn.moving_shape_video("circle", "red", "left", container=container)
    a = decode_audio(syn.add_audio_track(video, syn.tone("tone", freq=700.0, seconds=2.0)))
    assert (a.format, a.subtype) == (fmt, "AAC")
    assert a.duration_s == pytest.approx(2.0, abs=0.15)
    assert peak_hz(a.wave, SR) == pytest.approx(700.0, abs=3)


@pytest.mark.parametrize("rate", [44_100, 48_000, 8_000, 22_050])
def test_resampled_to_the_target_rate(rate: int) -> None:
    a = decode_audio(syn.encode_audio(syn.tone("tone", freq=440.0, sample_rate=rate), rate))
    assert a.native_rate == rate
    assert a.sample_rate == SR
    assert a.wave.shape == (SR,)
    assert peak_hz(a.wave, SR) == pytest.approx(440.0, abs=2)
    b = decode_audio(
        syn.encode_audio(syn.tone("tone", sample_rate=rate), rate), AudioLimits(sample_rate=rate)
    )
    assert b.wave.shape == (rate,)  # no resampling at the native rate


def test_channels_are_averaged_to_mono() -> None:
    left = syn.tone("tone", freq=500.0)
    right = syn.tone("tone", freq=2000.0, gain=0.25)
    a = decode_audio(syn.encode_audio(np.stack([left, right, -right], axis=1), SR, "FLAC"))
    assert a.channels == 3
    assert np.abs(a.wave - left / 3).max() < 1e-3  # right and -right cancel


def test_resample_reduces_up_and_down_by_their_gcd(monkeypatch: pytest.MonkeyPatch) -> None:
    import scipy.signal

    seen = []
    real = scipy.signal.resample_poly
    monkeypatch.setattr(
        scipy.signal,
        "resample_poly",
        lambda x, up, down: seen.append((up, down)) or real(x, up, down),
    )
    resample(np.zeros(441, np.float32), 44_100, 16_000)
    assert seen == [(160, 441)]


@pytest.mark.parametrize(
    ("make", "limits", "reason"),
    [
        pytest.param(lambda: b"", None, "unsupported_media", id="empty"),
        pytest.param(syn.not_media, None, "unsupported_media", id="random-bytes"),
        pytest.param(lambda: b"just some text\n" * 100, None, "unsupported_media", id="text"),
        pytest.param(
            lambda: syn.moving_shape_video("circle", "red", "up"),
            None,
            "unsupported_media",
            id="video-no-audio",
        ),
        *(
            pytest.param(
                lambda f=f, k=k: syn.truncate(
                    syn.encode_audio(syn.tone("chirp_up", seconds=2), SR, f), k
                ),
                None,
                "truncated_audio",
                id=f"{f}-cut-{k}",
            )
            for f, k in [
                ("WAV", 0.02),
                ("WAV", 0.5),
                ("WAV", 0.99),
                ("FLAC", 0.3),
                ("FLAC", 0.98),
                ("OGG", 0.05),
                ("OGG", 0.7),
                ("MP3", 0.5),
            ]
        ),
        pytest.param(
            lambda: syn.truncate(syn.encode_m4a(syn.tone("tone"), SR), 0.5),
            None,
            "truncated_audio",
            id="m4a-cut",
        ),
        pytest.param(
            lambda: syn.encode_audio(
                np.array([0.1, np.nan] * 4000, np.float32), SR, "WAV", "FLOAT"
            ),
            None,
            "corrupt_audio",
            id="nan-samples",
        ),
        pytest.param(
            lambda: syn.encode_audio(np.zeros((SR, 20), np.float32), SR),
            None,
            "too_many_channels",
            id="20-ch",
        ),
        pytest.param(
            lambda: syn.encode_audio(np.zeros((SR, 3), np.float32), SR),
            AudioLimits(max_channels=2),
            "too_many_channels",
            id="3-ch-cap-2",
        ),
        pytest.param(
            lambda: syn.encode_audio(syn.tone("tone", seconds=2), SR),
            AudioLimits(max_duration_s=1.5),
            "audio_too_long",
            id="wav-2s",
        ),
        pytest.param(
            lambda: syn.encode_m4a(syn.tone("tone", seconds=2), SR),
            AudioLimits(max_duration_s=1.5),
            "audio_too_long",
            id="m4a-2s",
        ),
        pytest.param(
            lambda: syn.lie_about_duration(
                syn.add_audio_track(
                    syn.moving_shape_video("circle", "red", "up", container="mkv", seconds=3),
                    syn.tone("tone", seconds=3.0),
                ),
                0.5,
            ),
            AudioLimits(max_duration_s=1.0),
            "audio_too_long",
            id="lying-mkv-decoded-length",
        ),
        pytest.param(
            lambda: syn.encode_audio(syn.tone("tone", seconds=0.05), SR),
            None,
            "audio_too_short",
            id="50ms",
        ),
        pytest.param(
            lambda: syn.encode_audio(np.zeros(0, np.float32), SR),
            None,
            "audio_too_short",
            id="0-samples",
        ),
        pytest.param(
            lambda: syn.encode_audio(np.zeros(SR, np.float32), SR),
            AudioLimits(reject_silent=True),
            "silent_audio",
            id="silence",
        ),
    ],
)
def test_rejections(make, limits: AudioLimits | None, reason: str) -> None:
    err = reject(make(), limits)
    assert err.reason == reason, err.detail


def test_silence_is_kept_unless_asked() -> None:
    a = decode_audio(syn.encode_audio(np.zeros(SR, np.float32), SR))
    assert not a.wave.any()
    quiet = syn.encode_audio(syn.tone("tone", gain=0.01), SR)
    assert decode_audio(quiet, AudioLimits(reject_silent=True)).duration_s == 1.0


def test_header_caps_come_before_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    import soundfile

    monkeypatch.setattr(soundfile.SoundFile, "read", lambda *a, **k: pytest.fail("read samples"))
    assert (
        reject(syn.encode_audio(np.zeros((SR, 20), np.float32), SR)).reason == "too_many_channels"
    )
    err = reject(syn.encode_audio(syn.tone("tone", seconds=2), SR), AudioLimits(max_duration_s=1))
    assert err.reason == "audio_too_long"
    assert "preprocess.audio.max_duration_s" in err.detail
    assert err.evidence["duration_s"] == 2.0


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3", "M4A"])
def test_damaged_files_never_raise_anything_else(fmt: str) -> None:
    wave = syn.tone("beeps", seconds=1.5)
    data = syn.encode_m4a(wave, SR) if fmt == "M4A" else syn.encode_audio(wave, SR, fmt)
    outcomes = set()
    variants = [syn.truncate(data, float(k)) for k in np.linspace(0.0, 1.0, 11)]
    for seed in range(3):
        b = bytearray(data)
        rng = np.random.default_rng(seed)
        for i in rng.integers(len(b) // 3, len(b), 50):
            b[i] = int(rng.integers(0, 256))
        variants.append(bytes(b))
    for v in variants:
        try:
            decode_audio(v)
            outcomes.add("ok")
        except MediaRejected as e:
            outcomes.add(e.reason)
    assert outcomes <= {
        "ok",
        "truncated_audio",
        "corrupt_audio",
        "unsupported_media",
        "audio_too_short",
    }
    assert "truncated_audio" in outcomes


# -- log-mel -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "frames"), [(SR, 98), (400, 1), (100, 1), (560, 2), (1, 1)])
def test_log_mel_shape(n: int, frames: int) -> None:
    mel = log_mel(np.ones(n, np.float32), SR)
    assert mel.shape == (frames, 64)  # 1 + (n - 400) // 160, padded to one frame
    assert mel.dtype == np.float32


@pytest.mark.parametrize("freq", [250.0, 1000.0, 3000.0, 6000.0])
def test_a_tone_peaks_in_its_mel_band(freq: float) -> None:
    mel = log_mel(syn.tone("tone", freq=freq), SR)
    centres = _mel_to_hz(np.linspace(0.0, float(_hz_to_mel(SR / 2)), 66))[1:-1]
    assert int(np.argmax(mel.mean(axis=0))) == int(np.argmin(np.abs(centres - freq)))


def test_log_mel_of_silence_is_the_floor_and_filters_are_cached() -> None:
    assert np.allclose(log_mel(np.zeros(SR, np.float32), SR), math.log(1e-6))
    fb = mel_filterbank(SR, 512, 64)
    assert fb is mel_filterbank(SR, 512, 64)
    assert fb.shape == (64, 257)
    assert np.all(fb.max(axis=1) > 0.5)  # every band has a bin near its peak


def test_log_mel_gain_is_a_shift() -> None:
    w = syn.tone("chirp_up")
    mel = log_mel(w, SR)
    loud = mel > math.log(1e-2)  # well above the 1e-6 floor
    assert loud.mean() > 0.1
    assert np.allclose(log_mel(2 * w, SR)[loud], mel[loud] + math.log(4), atol=1e-3)


# -- fingerprint ---------------------------------------------------------------------------------


def _decode(data: bytes) -> np.ndarray:
    return decode_audio(data).wave


def _noisy(w: np.ndarray, snr_db: float = 30.0, seed: int = 5) -> np.ndarray:
    power = float(np.mean(w.astype(np.float64) ** 2))
    noise = np.random.default_rng(seed).standard_normal(len(w)) * math.sqrt(
        power / 10 ** (snr_db / 10)
    )
    return (w + noise).astype(np.float32)


PERTURB = {
    "gain+6dB": lambda w: w * 2.0,
    "gain-6dB": lambda w: w * 0.5,
    "noise-30dB-SNR": _noisy,
    "flac": lambda w: _decode(syn.encode_audio(w, SR, "FLAC")),
    "ogg-vorbis": lambda w: _decode(syn.encode_audio(w, SR, "OGG")),
    "from-44.1kHz": lambda w: _decode(syn.encode_audio(resample(w, SR, 44_100), 44_100)),
}


@functools.cache
def hashes_of(kind: str, freq: float, seed: int = 1) -> tuple[int, int]:
    return audio_hashes(log_mel(syn.tone(kind, freq=freq, seed=seed), SR))


@pytest.mark.parametrize("perturb", sorted(PERTURB))
@pytest.mark.parametrize(
    ("kind", "freq"),
    [
        ("tone", 440.0),
        ("tone", 1200.0),
        ("chirp_up", 440.0),
        ("chirp_down", 440.0),
        ("noise", 440.0),
        ("beeps", 1200.0),
    ],
)
def test_fingerprint_is_near_for_copies(perturb: str, kind: str, freq: float) -> None:
    # measured: pHash within 3 bits, dHash within 4 (most are 0; the worst is white noise
    # through Ogg Vorbis); also over noise seeds 0-9
    w = syn.tone(kind, freq=freq, seed=1)
    h0 = hashes_of(kind, freq)
    h1 = audio_hashes(log_mel(PERTURB[perturb](w), SR))
    assert hamming64(h0[0], h1[0]) <= 6
    assert hamming64(h0[1], h1[1]) <= 6


def test_fingerprint_of_a_native_44khz_recording() -> None:
    w44 = syn.tone("chirp_down", freq=440.0, seed=1, sample_rate=44_100)
    h = audio_hashes(log_mel(_decode(syn.encode_audio(w44, 44_100)), SR))
    assert hamming64(h[0], hashes_of("chirp_down", 440.0)[0]) <= 4
    assert hamming64(h[1], hashes_of("chirp_down", 440.0)[1]) <= 4


@pytest.mark.parametrize(
    ("a", "b", "min_p", "min_d"),
    [
        # (pHash, dHash) measured: (32, 24), (36, 24), (28, 19), (27, 24), (40, 46), (32, 32);
        # a tone and a chirp around the same pitch are far in pHash only: (27, 9)
        (("tone", 440.0), ("tone", 1200.0), 16, 16),
        (("tone", 220.0), ("tone", 440.0), 16, 16),
        (("chirp_up", 440.0), ("chirp_down", 440.0), 16, 16),
        (("chirp_up", 1200.0), ("chirp_down", 1200.0), 16, 16),
        (("noise", 440.0), ("tone", 440.0), 16, 16),
        (("beeps", 440.0), ("beeps", 1200.0), 16, 16),
        (("tone", 300.0), ("chirp_up", 300.0), 16, 8),
    ],
)
def test_fingerprint_is_far_for_different_sounds(
    a: tuple, b: tuple, min_p: int, min_d: int
) -> None:
    ha, hb = hashes_of(*a), hashes_of(*b)
    assert hamming64(ha[0], hb[0]) >= min_p
    assert hamming64(ha[1], hb[1]) >= min_d


def test_fingerprint_limits_are_what_the_docstring_says() -> None:
    # a steady tone and beeps of one pitch look alike to both hashes (documented), and so do
    # two tones of one pitch that differ only in phase
    assert hamming64(hashes_of("tone", 440.0)[0], hashes_of("beeps", 440.0)[0]) <= 4
    assert hashes_of("tone", 440.0) == hashes_of("tone", 440.0, seed=9)
    # different white noise is different audio to pHash
    assert hamming64(hashes_of("noise", 440.0)[0], hashes_of("noise", 440.0, seed=2)[0]) >= 16


def test_fingerprint_picture_and_constant_input() -> None:
    mel = log_mel(syn.tone("tone", freq=1000.0), SR)
    pic = spectrogram_picture(mel)
    assert pic.shape == (mel.shape[0], 60)  # top 4 of 64 bands left out
    assert pic.min() == 0.0
    assert pic.max() == 1.0
    assert audio_hashes(np.full((50, 64), -3.0, np.float32)) == (0, 0)
    assert audio_hashes(log_mel(np.zeros(10, np.float32), SR)) == (0, 0)
    with pytest.raises(ValueError, match="n_frames"):
        audio_hashes(np.zeros((0, 64)))


# -- logmel-stats --------------------------------------------------------------------------------


def embed(kind: str, freq: float, seed: int = 1, gain: float = 0.5) -> np.ndarray:
    return logmel_stats(log_mel(syn.tone(kind, freq=freq, seed=seed, gain=gain), SR))


def test_logmel_stats_layout() -> None:
    assert LOGMEL_STATS_NAME == "logmel-stats"
    mel = log_mel(syn.tone("chirp_up"), SR)
    v = logmel_stats(mel)
    assert v.shape == (192,)
    assert v.dtype == np.float32
    assert float(np.linalg.norm(v)) == pytest.approx(1.0, abs=1e-6)
    half = mel.shape[0] // 2
    raw = np.concatenate([mel.mean(0), mel.std(0), mel[half:].mean(0) - mel[:half].mean(0)])
    assert np.allclose(v, raw / np.linalg.norm(raw), atol=1e-5)
    assert not logmel_stats(np.zeros((3, 8))).any()


@pytest.mark.parametrize(
    ("same", "other"),
    [
        # cosines measured: same sound (other phase, gain 0.3) 0.999; other pitch 0.78 / 0.92;
        # other chirp direction 0.72 / 0.64; beeps vs tone 0.94
        ((("tone", 440.0), ("tone", 440.0)), ("tone", 1200.0)),
        ((("tone", 220.0), ("tone", 220.0)), ("tone", 440.0)),
        ((("chirp_up", 440.0), ("chirp_up", 440.0)), ("chirp_down", 440.0)),
        ((("chirp_down", 1200.0), ("chirp_down", 1200.0)), ("chirp_up", 1200.0)),
        ((("beeps", 440.0), ("beeps", 440.0)), ("tone", 440.0)),
    ],
)
def test_logmel_stats_separates_pitch_and_direction(same: tuple, other: tuple) -> None:
    a = embed(*same[0])
    a2 = embed(*same[1], seed=7, gain=0.3)
    b = embed(*other)
    assert float(a @ a2) > 0.99
    assert float(a @ b) < 0.96
    assert float(a @ a2) - float(a @ b) > 0.03


# -- corpus --------------------------------------------------------------------------------------


def test_audio_corpus(tmp_path) -> None:
    path = syn.write_audio_corpus(tmp_path, 12, seed=2)
    assert path == tmp_path / "clotho_captions.csv"
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5"]
    assert [r[0] for r in rows[1:]] == [f"clip{i}.wav" for i in range(12)]
    hashes = []
    for row in rows[1:]:
        assert all(c.strip() for c in row[1:])
        a = decode_audio((tmp_path / "audio" / row[0]).read_bytes())
        assert (a.format, a.duration_s) == ("WAV", 1.0)
        hashes.append(audio_hashes(log_mel(a.wave, SR)))
        if "tone" in row[1] and "pitched" in row[1]:
            hz = peak_hz(a.wave, SR)
            assert (hz >= 600) if "high" in row[1] else (hz < 300)
    for a, b in itertools.combinations(hashes, 2):  # plants no near duplicates
        assert hamming64(a[0], b[0]) > 6 or hamming64(a[1], b[1]) > 10
    assert syn.write_audio_corpus(tmp_path / "again", 12, seed=2).read_text() == path.read_text()
