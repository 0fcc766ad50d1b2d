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


def tiny_clip(out: Path, seed: int = 0, image_size: int = 32) -> Path:
    """A tiny CLIP dual encoder (projection 16) with a byte-level BPE tokenizer and an image
    processor that resizes to ``image_size``."""
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
    text = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=8,
    )
    config = CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16
    )
    CLIPModel(config).eval().save_pretrained(out)
    CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges))).save_pretrained(out)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(out)
    return out
