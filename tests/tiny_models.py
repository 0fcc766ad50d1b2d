"""Tiny randomly initialised ``transformers`` models saved with ``save_pretrained``: they go
through exactly the loading path of real models, in well under a second."""

from __future__ import annotations

from pathlib import Path

WORDS = ["a", "the", "red", "blue", "bus", "cat", "dog", "on", "street", "mat", "photo", "of"]


def tiny_bert(out: Path, seed: int = 0) -> Path:
    """A 2-layer BERT (hidden 32) with a WordPiece tokenizer over :data:`WORDS`."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(seed)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + WORDS + ["##s"])}
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).eval().save_pretrained(out)
    BertTokenizer(vocab=vocab).save_pretrained(out)
    return out


def tiny_clip(
    out: Path,
    seed: int = 0,
    image_size: int = 32,
    *,
    width: int = 32,
    layers: int = 2,
    heads: int = 2,
    patch: int = 8,
    text_width: int | None = None,
    text_layers: int | None = None,
    text_heads: int | None = None,
    projection: int = 16,
) -> Path:
    """A tiny CLIP dual encoder (projection 16) with a byte-level BPE tokenizer and an image
    processor that resizes to ``image_size``. The keyword arguments size it up (e.g. to
    ViT-B/32's shapes for a GPU throughput check); the weights are always random."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPTextConfig,
        CLIPTokenizer,
        CLIPVisionConfig,
    )

    torch.manual_seed(seed)
    base = ["<|startoftext|>", "<|endoftext|>"]
    chars = sorted({c for w in WORDS for c in w})
    tokens = base + chars + [c + "</w>" for c in chars] + [w + "</w>" for w in WORDS]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    merges: list[tuple[str, str]] = []
    for w in WORDS:  # merge left to right: ((c a) t</w>) ...
        pieces = [*list(w[:-1]), w[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            merged = pieces[0] + pieces[1]
            vocab.setdefault(merged, len(vocab))
            pieces = [merged, *pieces[2:]]
    tw = text_width or width
    text = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=tw,
        intermediate_size=2 * tw if tw <= 32 else 4 * tw,
        num_hidden_layers=text_layers or layers,
        num_attention_heads=text_heads or heads,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vision = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=2 * width if width <= 32 else 4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch,
    )
    config = CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=projection
    )
    CLIPModel(config).eval().save_pretrained(out)
    CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges))).save_pretrained(out)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(out)
    return out


# --------------------------------------------------------------------------- audio

#: Characters of the tiny CTC vocabulary (``|`` is the word delimiter).
CTC_CHARS = "abcdefghijklmnopqrstuvwxyz'"


def _tiny_wav2vec2_config(**kwargs: object) -> object:
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 4, 4),  # 80 samples (5 ms) per frame
        conv_kernel=(10, 4, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",  # the large-model layout that takes an attention mask
        do_stable_layer_norm=True,
        mask_time_prob=0.0,
        **kwargs,
    )


def tiny_wav2vec2(out: Path, seed: int = 0, *, attention_mask: bool = True) -> Path:
    """A 2-layer wav2vec2 encoder (hidden 32, 3 conv layers) with its 16 kHz feature extractor.
    ``attention_mask=False`` saves the feature extractor the way wav2vec2-base's is (padding
    cannot be masked)."""
    import torch
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(seed)
    Wav2Vec2Model(_tiny_wav2vec2_config()).eval().save_pretrained(out)
    Wav2Vec2FeatureExtractor(
        sampling_rate=16000, return_attention_mask=attention_mask
    ).save_pretrained(out)
    return out


def tiny_wav2vec2_ctc(out: Path, seed: int = 0) -> Path:
    """:func:`tiny_wav2vec2` with a CTC head over :data:`CTC_CHARS` and a ``Wav2Vec2Processor``
    (feature extractor + ``Wav2Vec2CTCTokenizer`` from a written ``vocab.json``)."""
    import json

    import torch
    from transformers import (
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    out.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<s>", "</s>", "<unk>", "|"]
    vocab = {t: i for i, t in enumerate(specials + list(CTC_CHARS))}
    (out / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(
        str(out / "vocab.json"), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|"
    )
    torch.manual_seed(seed)
    config = _tiny_wav2vec2_config(vocab_size=len(vocab), pad_token_id=vocab["<pad>"])
    Wav2Vec2ForCTC(config).eval().save_pretrained(out)
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out)
    return out


WHISPER_SPECIALS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|transcribe|>",
    "<|translate|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nospeech|>",
    "<|notimestamps|>",
]


def tiny_whisper(out: Path, seed: int = 0) -> Path:
    """A 2+2-layer English-only Whisper (d_model 32) with the real 80-band, 30 s feature
    extractor and a byte-level BPE tokenizer over the 256 byte symbols (no merges) plus
    Whisper's special tokens, and a generation config that decodes without timestamps."""
    import torch
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    tokenizer = WhisperTokenizer(vocab={c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))})
    tokenizer.add_special_tokens({"additional_special_tokens": WHISPER_SPECIALS[1:]})
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in WHISPER_SPECIALS}
    eos, start = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=1500,
        max_target_positions=448,
        pad_token_id=eos,
        bos_token_id=eos,
        eos_token_id=eos,
        decoder_start_token_id=start,
        suppress_tokens=None,
        begin_suppress_tokens=None,  # the defaults are ids of the real 51865-token vocabulary
    )
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=start,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        no_timestamps_token_id=ids["<|notimestamps|>"],
        is_multilingual=False,
        max_length=448,
    )
    model.save_pretrained(out)
    WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer
    ).save_pretrained(out)
    return out


def tiny_clap(out: Path, seed: int = 0) -> Path:
    """A tiny CLAP (HTSAT audio tower with 2 one-block stages, projection 16) with its 48 kHz,
    10 s feature extractor set to ``rand_trunc`` as laion/clap-htsat-unfused's is. No text
    tokenizer: it serves the audio side."""
    import torch
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapTextConfig,
    )

    torch.manual_seed(seed)
    audio = ClapAudioConfig(
        depths=[1, 1],
        num_attention_heads=[2, 2],
        patch_embeds_hidden_size=16,
        hidden_size=32,
        window_size=8,
        spec_size=256,
        num_mel_bins=64,
    )
    text = ClapTextConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
    )
    config = ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16)
    ClapModel(config).eval().save_pretrained(out)
    ClapFeatureExtractor(truncation="rand_trunc").save_pretrained(out)
    return out


def tiny_ast(out: Path, seed: int = 0) -> Path:
    """A 2-layer Audio Spectrogram Transformer (hidden 32) over 128 frames (~1.3 s) of 128-band
    Kaldi fbanks, with its feature extractor."""
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    torch.manual_seed(seed)
    config = ASTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_length=128,
        num_mel_bins=128,
    )
    ASTModel(config).eval().save_pretrained(out)
    ASTFeatureExtractor(max_length=128).save_pretrained(out)
    return out
