"""Encode texts with a tower that ``deepsem export`` wrote, or re-rank them with an exported re-ranker, using nothing
of deepsem.

What a service in another runtime does (ONNX Runtime in Java, C++, Node or the browser follows the same steps):
tokenize with the Hugging Face ``tokenizers`` file written beside the model, pad, run the graph.

    pip install onnxruntime tokenizers numpy
    deepsem export --model runs/bq --out tower.onnx
    python examples/onnx_standalone.py tower.onnx "怎么还款" "如何还钱" --out vectors.npy
    deepsem export --model runs/rerank-bq --out rerank.onnx
    python examples/onnx_standalone.py rerank.onnx --query "怎么还款" "如何还钱" "开户要带什么"

A tower's graph takes ``input_ids`` (batch, length) int64, right-padded with 0, and ``lengths`` (batch,) int64, and
returns ``embedding`` (batch, dim), L2-normalised: the cosine of two texts is the dot product of their vectors.
A re-ranker's takes ``query_ids`` / ``query_lengths`` (one row for all documents, or one per document) and
``doc_ids`` / ``doc_lengths`` the same way, and returns ``logits`` and ``probabilities`` (batch,).
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


def padded(tokenizer: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Ids (batch, longest) int64 right-padded with 0, and lengths (batch,) int64."""
    ids = [e.ids or [UNK_ID] for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    batch = np.zeros((len(ids), int(lengths.max())), dtype=np.int64)
    for row, x in enumerate(ids):
        batch[row, : len(x)] = x
    return batch, lengths


def encode(session: ort.InferenceSession, tokenizer: Tokenizer, texts: list[str]) -> np.ndarray:
    batch, lengths = padded(tokenizer, texts)
    return session.run(["embedding"], {"input_ids": batch, "lengths": lengths})[0]


def rerank(session: ort.InferenceSession, tokenizer: Tokenizer, query: str, docs: list[str]) -> np.ndarray:
    """The re-ranker's relevance probability of each document for ``query``."""
    q, q_len = padded(tokenizer, [query])
    d, d_len = padded(tokenizer, docs)
    feeds = {"query_ids": q, "query_lengths": q_len, "doc_ids": d, "doc_lengths": d_len}
    return session.run(["probabilities"], feeds)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the .onnx file deepsem export wrote")
    parser.add_argument("texts", nargs="*", help="texts to encode (default: one per line on stdin)")
    parser.add_argument("--out", type=Path, help="write the vectors (a re-ranker: the probabilities) here (.npy) "
                        "instead of printing them")
    parser.add_argument("--query", help="with a re-ranker: the query the texts are scored against")
    args = parser.parse_intermixed_args()  # texts before or after the options
    tokenizer_file = args.model.with_name(f"{args.model.stem}.tokenizer.json")
    if not tokenizer_file.exists():
        sys.exit(f"{tokenizer_file}: missing; this model's tokenizer has no tokenizers form (see the model's "
                 "metadata key deepsem.tokenizer_notes)")
    session = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    texts = args.texts or sys.stdin.read().splitlines()
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    if "query_ids" in {i.name for i in session.get_inputs()}:  # a re-ranker
        if args.query is None:
            sys.exit(f"{args.model}: a re-ranker scores texts against a query: give --query")
        probabilities = rerank(session, tokenizer, args.query, texts)
        if args.out is not None:
            np.save(args.out, probabilities)
        else:
            for row in np.argsort(-probabilities, kind="stable"):  # most relevant first
                print(f"{probabilities[row]:.4f}  {texts[row]}")
        return
    if args.query is not None:
        sys.exit(f"{args.model}: a tower encodes texts; --query is for a re-ranker")
    vectors = encode(session, tokenizer, texts)
    if args.out is not None:
        np.save(args.out, vectors)
    else:
        for text, cosines in zip(texts, vectors @ vectors.T, strict=True):
            print(text, " ".join(f"{c:.3f}" for c in cosines))


if __name__ == "__main__":
    main()
