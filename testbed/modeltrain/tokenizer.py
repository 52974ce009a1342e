"""A CLIP-format tokenizer written by the project: ``vocab.json`` + ``merges.txt`` that ``CLIPTokenizer`` loads.

``CLIPTokenizer.from_pretrained`` of a hub name silently returns a useless 2-token tokenizer offline, so the default
model ships its own. The vocabulary is:

* the special tokens ``<|startoftext|>``, ``<|endoftext|>`` (also padding, as in SD) and ``<|unk|>``;
* the 26 lowercase letters, alone and word-final (``a``, ``a</w>``), and ``,``/``.`` as words;
* every intermediate symbol and whole word of a byte-pair encoding learned on the grammar's words, so each
  grammar word is exactly one token.

Any lowercase word therefore tokenizes (an unknown word becomes letter / sub-word pieces, which the text encoder
sees in training as distractors and learns to ignore); any other character (digits, accents, symbols) becomes
``<|unk|>``. Nothing ever fails to tokenize.
"""

from __future__ import annotations

import json
import string
from collections import Counter
from pathlib import Path

BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<|unk|>"
SPECIALS = (BOS, EOS, UNK)
EOW = "</w>"
PUNCTUATION = (",", ".")


class TokenizerBuildError(RuntimeError):
    """The learned merges do not reproduce a grammar word as one token (a bug in the BPE learner)."""


def _symbols(word: str) -> list[str]:
    return list(word[:-1]) + [word[-1] + EOW]


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges (most frequent pair first, ties broken alphabetically) until every word is one symbol."""
    seqs = {w: _symbols(w) for w in sorted(set(words))}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for seq in seqs.values():
            for a, b in zip(seq, seq[1:], strict=False):
                pairs[(a, b)] += 1
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        for w, seq in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[w] = out


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab, merges)`` for a word list (see the module docstring); ids are stable for a given word list."""
    merges = learn_merges(words)
    tokens: list[str] = list(SPECIALS)
    letters = string.ascii_lowercase
    tokens += list(letters) + [c + EOW for c in letters] + [p + EOW for p in PUNCTUATION]
    for a, b in merges:
        tokens.append(a + b)
    seen: dict[str, int] = {}
    for tok in tokens:
        seen.setdefault(tok, len(seen))
    return seen, merges


def write_tokenizer(out_dir: str | Path, words: list[str], max_length: int) -> Path:
    """Write ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and ``special_tokens_map.json``, then load
    the folder with ``CLIPTokenizer`` and check that every word is one token.

    Raises
    ------
    TokenizerBuildError
        A grammar word does not come out as its own single token.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(words)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": EOS}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "do_lower_case": True,
              "clean_up_tokenization_spaces": False, **specials}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tok = load_tokenizer(out)
    for w in words:
        ids = tok(w, add_special_tokens=False).input_ids
        if ids != [vocab[w + EOW]]:
            raise TokenizerBuildError(f"word {w!r} tokenizes to {ids}, expected [{vocab[w + EOW]}]")
    return out


def load_tokenizer(folder: str | Path):
    """``CLIPTokenizer.from_pretrained(folder)`` (local files only)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
