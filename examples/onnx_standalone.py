"""Encode texts with a tower that ``deepsem export`` wrote, using nothing of deepsem.

What a service in another runtime does (ONNX Runtime in Java, C++, Node or the browser follows the same steps):
tokenize with the Hugging Face ``tokenizers`` file written beside the model, pad, run the graph.

    pip install onnxruntime tokenizers numpy
    deepsem export --model runs/bq --out tower.onnx
    python examples/onnx_standalone.py tower.onnx "怎么还款" "如何还钱" --out vectors.npy

The graph takes ``input_ids`` (batch, length) int64, right-padded with 0, and ``lengths`` (batch,) int64, and
returns ``embedding`` (batch, dim), L2-normalised: the cosine of two texts is the dot product of their vectors.
deepsem gives an empty text the id of ``[UNK]`` (1); the tokenizer file gives it no ids, so do the same here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

UNK_ID = 1


def encode(session: ort.InferenceSession, tokenizer: Tokenizer, texts: list[str]) -> np.ndarray:
    ids = [e.ids or [UNK_ID] for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    batch = np.zeros((len(ids), int(lengths.max())), dtype=np.int64)
    for row, x in enumerate(ids):
        batch[row, : len(x)] = x
    return session.run(["embedding"], {"input_ids": batch, "lengths": lengths})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the .onnx file deepsem export wrote")
    parser.add_argument("texts", nargs="*", help="texts to encode (default: one per line on stdin)")
    parser.add_argument("--out", type=Path, help="write the vectors here (.npy) instead of printing cosines")
    args = parser.parse_args()
    tokenizer_file = args.model.with_name(f"{args.model.stem}.tokenizer.json")
    if not tokenizer_file.exists():
        sys.exit(f"{tokenizer_file}: missing; this model's tokenizer has no tokenizers form (see the model's "
                 "metadata key deepsem.tokenizer_notes)")
    session = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    texts = args.texts or sys.stdin.read().splitlines()
    vectors = encode(session, Tokenizer.from_file(str(tokenizer_file)), texts)
    if args.out is not None:
        np.save(args.out, vectors)
    else:
        for text, cosines in zip(texts, vectors @ vectors.T, strict=True):
            print(text, " ".join(f"{c:.3f}" for c in cosines))


if __name__ == "__main__":
    main()
