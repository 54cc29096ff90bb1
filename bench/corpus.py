"""The benchmark corpus: a few hundred files in a tree, 40% text-like, 40% random, 20% duplicates.

Deterministic for a given size and seed. Used by bench/ingest and bench/mount.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
from pathlib import Path

MiB = 1024 * 1024


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": MiB, "G": 1024 * MiB}
    text = text.strip().upper().rstrip("IB")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def make_vocabulary(rng: random.Random, count: int = 8000) -> list[bytes]:
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [
        12,
        9,
        8,
        7.5,
        7,
        6.7,
        6.3,
        6,
        5.9,
        4.3,
        4,
        2.8,
        2.8,
        2.4,
        2.4,
        2.2,
        2,
        2,
        1.9,
        1.5,
        1,
        0.8,
        0.2,
        0.2,
        0.1,
        0.1,
    ]
    words = set()
    while len(words) < count:
        words.add("".join(rng.choices(letters, weights, k=rng.randint(2, 11))))
    return [w.encode() for w in sorted(words)]


def text_bytes(rng: random.Random, vocab: list[bytes], cum_weights: list[float], size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        words = rng.choices(vocab, cum_weights=cum_weights, k=4096)
        for i in range(0, len(words), 12):
            out += b" ".join(words[i : i + 12]) + b"\n"
    return bytes(out[:size])


def generate_corpus(root: Path, total: int, seed: int) -> list[Path]:
    rng = random.Random(seed)
    vocab = make_vocabulary(rng)
    # Zipf-like word frequencies, like natural text.
    cum_weights = list(itertools.accumulate(1 / (i + 1) for i in range(len(vocab))))
    sizes: list[int] = []
    budget = int(total * 0.8)
    while budget > 0:
        size = min(budget, int(2 ** rng.uniform(12, 25)))  # 4 KiB .. 32 MiB, log-uniform
        sizes.append(size)
        budget -= size
    files: list[Path] = []
    for i, size in enumerate(sizes):
        folder = root / f"d{rng.randrange(8)}" / f"e{rng.randrange(6)}"
        folder.mkdir(parents=True, exist_ok=True)
        if i % 2 == 0:
            path = folder / f"doc{i}.txt"
            path.write_bytes(text_bytes(rng, vocab, cum_weights, size))
        else:
            path = folder / f"blob{i}.bin"
            path.write_bytes(os.urandom(size))
        files.append(path)
    dup_budget = total - sum(sizes)
    while dup_budget > 0:
        original = rng.choice(files)
        copy = root / "copies" / f"{len(files)}-{original.name}"
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(original, copy)
        files.append(copy)
        dup_budget -= copy.stat().st_size
    return files
