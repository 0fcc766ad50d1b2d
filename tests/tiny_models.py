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
