"""A CLIP tokenizer built offline: byte-level BPE with a small merge table.

Real checkpoints ship their own tokenizer; this one exists so tests and random-weight benchmarks never need
the hub. It is a genuine `transformers.CLIPTokenizer` (same pre-tokenisation, padding to 77, special tokens
at the ids of the config), only with a tiny vocabulary.
"""

from __future__ import annotations

from cascade_trt.configs import TextEncoderConfig

# Frequent English bigrams, so ordinary prompts tokenise into fewer than one token per character.
_MERGES = [
    "t h",
    "h e",
    "i n",
    "e r",
    "a n",
    "r e",
    "o n",
    "a t",
    "e n",
    "n d",
    "o r",
    "e s",
    "t i",
    "a r",
    "t e",
    "s t",
    "a l",
    "o u",
    "i t",
    "l e",
]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def build_vocab(config: TextEncoderConfig) -> tuple[dict[str, int], list[str]]:
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges = []
    for pair in _MERGES:
        a, b = pair.split()
        merges.append(f"{a} {b}")
        tokens.append(a + b)
    if len(tokens) + 2 > config.vocab_size:
        raise ValueError(
            f"vocab_size {config.vocab_size} is too small for the offline tokenizer ({len(tokens) + 2})"
        )
    vocab = {tok: i for i, tok in enumerate(tokens)}
    vocab["<|startoftext|>"] = config.bos_token_id
    vocab["<|endoftext|>"] = config.eos_token_id
    return vocab, merges


def build_tokenizer(config: TextEncoderConfig):
    """A `CLIPTokenizer` padding to the text encoder's sequence length.

    Built through `from_pretrained` on written vocab/merges files: the one constructor transformers 4 and 5
    agree on.
    """
    import json
    import tempfile
    from pathlib import Path

    from transformers import CLIPTokenizer

    vocab, merges = build_vocab(config)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "vocab.json").write_text(json.dumps(vocab))
        Path(tmp, "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=config.max_position_embeddings)
