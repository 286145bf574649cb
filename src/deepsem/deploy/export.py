"""A trained model as ONNX files that any ONNX runtime runs, with the tokenizer beside them.

Every part a runtime needs is one graph, from ids to the final answer, pooling and normalisation included:

==============  =====================  =====================================================================
task            part (file)            inputs -> outputs
==============  =====================  =====================================================================
two-tower       ``query`` (FILE)       ``input_ids`` (B, T), ``lengths`` (B,) -> ``embedding`` (B, dim), L2-normalised
                ``doc`` (FILE.doc)     the same, when the towers are not shared
classifier      ``classifier`` (FILE)  ``input_ids``, ``lengths`` -> ``logits``, ``probabilities`` (B, labels)
recommender     ``user`` (FILE)        ``history`` (B, T) item rows (catalogue position + 1), ``lengths``
                                       [, ``features`` (B, F)] -> ``user_vector`` (B, dim); the item vectors in
                                       FILE.items.npy and their ids in FILE.items.json
rerank          ``reranker`` (FILE)    ``query_ids`` (B or 1, Tq), ``query_lengths``, ``doc_ids`` (B, Td),
                                       ``doc_lengths`` -> ``logits``, ``probabilities`` (B,), ``doc_states``
                                       (B, Td, 2H); one query row goes with every document
                ``documents``          ``doc_ids``, ``doc_lengths`` -> ``doc_states``: the documents' encoder
                (FILE.documents.onnx)  states, which do not depend on the query
                ``encoded``            ``reranker``'s inputs and ``doc_states`` -> ``logits``,
                (FILE.encoded.onnx)    ``probabilities``: re-ranking documents whose states were computed
                                       earlier (a third less work; deepsem keeps them in a cache)
==============  =====================  =====================================================================

The re-ranker's ``documents`` and ``encoded`` parts are optional when a file is loaded (exports of deepsem before
them have the ``reranker`` part only; such a model re-ranks without the document cache).

Batch and length axes are dynamic; ids are right-padded with 0 and every length is at least 1 (deepsem's
tokenizers give ``[UNK]`` for an empty text). Each file's metadata (``deepsem.*`` keys) names its task, part,
inputs and tokenizer. The tokenizer travels as a Hugging Face ``tokenizer.json`` (FILE.tokenizer.json) where
``tokenizers`` expresses it exactly (``char``, ``subword``), and always as a vocabulary, one token per line, the
line number its id (FILE.vocab.txt); see :data:`TOKENIZER_NOTES` for the others.

``quantize="int8"`` writes onnxruntime's dynamic int8 quantisation of each graph: weights of the matrix products,
the embedding tables and the recurrent operators as int8, activations quantised on the fly.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from deepsem.fileio import atomic_write_bytes, atomic_write_json, atomic_write_npy, atomic_write_text
from deepsem.models.classifier import TextClassifier
from deepsem.models.cross_encoder import CrossEncoderModel
from deepsem.models.recommender import TwoTowerRecommender
from deepsem.models.two_tower import TwoTowerModel
from deepsem.nn.onnx import Graph

if TYPE_CHECKING:
    import onnx

#: How another runtime reproduces each tokenizer (the ``deepsem.tokenizer_notes`` metadata key).
TOKENIZER_NOTES = {
    "char": "FILE.tokenizer.json (Hugging Face tokenizers) gives the same ids, except that an empty text gives no "
            "ids where deepsem gives [UNK] (id 1).",
    "subword": "FILE.tokenizer.json (Hugging Face tokenizers) gives the same ids, except that an empty text gives "
               "no ids where deepsem gives [UNK] (id 1).",
    "word": "not expressible in tokenizers: words come from jieba's segmentation (any jieba port with jieba's "
            "default dictionary: jieba-rs, cppjieba, nodejieba); ids are line numbers of FILE.vocab.txt, unknown "
            "words 1.",
    "trigram": "not expressible in tokenizers: NFKC, lower-case, split into words, each word '#word#' cut into "
               "letter trigrams, words separated by id 2; ids are line numbers of FILE.vocab.txt, unknown 1.",
}
QUANTIZE = ("int8",)
#: Parts a loaded file set may lack (written by a deepsem before them): the re-ranker's document-cache graphs.
OPTIONAL_PARTS = ("documents", "encoded")


def _text_inputs(g: Graph) -> tuple[str, str]:
    return g.input("input_ids", "int64", ["batch", "length"]), g.input("lengths", "int64", ["batch"])


def _two_tower_parts(model: TwoTowerModel) -> dict[str, Graph]:
    parts: dict[str, Graph] = {}
    for side in part_names(model):
        g = Graph(f"deepsem_{side}_tower")
        ids, lengths = _text_inputs(g)
        tower = model.query_tower if side == "query" else model.doc_tower
        g.output(g.l2_normalize(tower.onnx(g, ids, lengths)), "embedding", "float",  # type: ignore[operator]
                 ["batch", model.config.tower.output_dim])
        parts[side] = g
    return parts


def _classifier_parts(model: TextClassifier) -> dict[str, Graph]:
    g = Graph("deepsem_classifier")
    ids, lengths = _text_inputs(g)
    logits = model.onnx(g, ids, lengths)
    labels = model.config.num_labels
    probabilities = g.op("Sigmoid", logits) if model.config.multi_label else g.op("Softmax", logits, axis=-1)
    g.output(logits, "logits", "float", ["batch", labels])
    g.output(probabilities, "probabilities", "float", ["batch", labels])
    return {"classifier": g}


def _recommender_parts(model: TwoTowerRecommender) -> dict[str, Graph]:
    g = Graph("deepsem_user_tower")
    history = g.input("history", "int64", ["batch", "length"])
    lengths = g.input("lengths", "int64", ["batch"])
    features = (g.input("features", "int64", ["batch", "features"]) if model.config.n_user_features > 0
                else None)
    user = model.user_tower.onnx(g, history, lengths, features, model.item_tower)
    g.output(user, "user_vector", "float", ["batch", model.config.output_dim])
    return {"user": g}


def _rerank_parts(model: CrossEncoderModel) -> dict[str, Graph]:
    parts: dict[str, Graph] = {}
    states: list[str | int] = ["batch", "doc_length", 2 * model.config.hidden_size]
    for part in part_names(model):
        g = Graph(f"deepsem_{part}")
        if part != "documents":
            q_ids = g.input("query_ids", "int64", ["queries", "query_length"])
            q_len = g.input("query_lengths", "int64", ["queries"])
        d_ids, d_len = g.input("doc_ids", "int64", ["batch", "doc_length"]), g.input("doc_lengths", "int64",
                                                                                      ["batch"])
        if part == "documents":
            g.output(model.onnx_documents(g, d_ids, d_len), "doc_states", "float", states)
        else:
            d_states = g.input("doc_states", "float", states) if part == "encoded" else None
            logits, encoded = model.onnx(g, q_ids, q_len, d_ids, d_len, d_states)
            g.output(logits, "logits", "float", ["batch"])
            g.output(g.op("Sigmoid", logits), "probabilities", "float", ["batch"])
            if part == "reranker":  # what the document cache keeps of the documents it has not met before
                g.output(encoded, "doc_states", "float", states)
        parts[part] = g
    return parts


def weights_digest(net: torch.nn.Module) -> str:
    """A SHA-256 over the network's parameters and buffers (names, shapes, float32 bytes): it ties an exported
    file to the weights it came from (the ``deepsem.weights_sha256`` metadata key)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float32 if tensor.is_floating_point() else torch.int64)
                      .contiguous().numpy().tobytes())
    return digest.hexdigest()


def part_names(net: torch.nn.Module) -> list[str]:
    """The parts :func:`onnx_models` writes for ``net``, the first one at ``--out`` itself."""
    if isinstance(net, TwoTowerModel):
        return ["query"] if net.query_tower is net.doc_tower else ["query", "doc"]
    if isinstance(net, CrossEncoderModel):
        return ["reranker", *OPTIONAL_PARTS]
    return ["classifier"] if isinstance(net, TextClassifier) else ["user"]


_PARTS: list[tuple[type, Callable[[Any], dict[str, Graph]]]] = [
    (TwoTowerModel, _two_tower_parts), (TextClassifier, _classifier_parts), (TwoTowerRecommender, _recommender_parts),
    (CrossEncoderModel, _rerank_parts)]
_TASKS = {TwoTowerModel: "two-tower", TextClassifier: "classifier", TwoTowerRecommender: "recommender",
          CrossEncoderModel: "rerank"}


def onnx_models(held: Any) -> dict[str, onnx.ModelProto]:
    """The ONNX model of each part of ``held`` (a :class:`~deepsem.tasks.matching.SemanticModel`, ``Classifier`` or
    ``Recommender``, or the network it holds), by part name, each with its ``deepsem.*`` metadata."""
    net = getattr(held, "model", held)
    found = [(kind, build) for kind, build in _PARTS if isinstance(net, kind)]
    if not found:
        raise TypeError(f"no ONNX export for {type(net).__name__}")
    kind, build = found[0]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            graphs = build(net)
    finally:
        net.train(was_training)
    tokenizer = getattr(held, "tokenizer", None) or getattr(held, "title_tokenizer", None)
    config = net.config.to_dict() if hasattr(net.config, "to_dict") else {}
    meta = {"deepsem.task": _TASKS[kind], "deepsem.weights_sha256": weights_digest(net),
            "deepsem.model": json.dumps(config, sort_keys=True, default=str)}
    if tokenizer is not None and kind is not TwoTowerRecommender:
        meta["deepsem.tokenizer"] = json.dumps({"name": tokenizer.name, "max_length": tokenizer.max_length,
                                                **tokenizer._options()}, sort_keys=True)
        meta["deepsem.tokenizer_notes"] = TOKENIZER_NOTES.get(tokenizer.name, "")
    if kind is TextClassifier and hasattr(held, "labels"):
        meta["deepsem.labels"] = json.dumps(list(held.labels), ensure_ascii=False)
    return {part: g.model({**meta, "deepsem.part": part}) for part, g in graphs.items()}


def quantize_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's dynamic int8 quantisation of ``model`` (weights int8, activations quantised on the fly)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="deepsem-int8-") as tmp, _quiet("root"):
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(model, source)
        quantize_dynamic(source, target, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gather", "LSTM"], extra_options={"MatMulConstBOnly": True})
        quantized = onnx.load_model(target)
    for entry in model.metadata_props:
        if entry.key not in {p.key for p in quantized.metadata_props}:
            quantized.metadata_props.append(entry)
    quantized.metadata_props.append(onnx.StringStringEntryProto(key="deepsem.quantized", value="int8"))
    return quantized


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silence ``logger`` below ERROR (onnxruntime's quantiser logs advice on the root logger at every call)."""
    log = logging.getLogger() if logger == "root" else logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def part_path(out: Path, part: str, first: str) -> Path:
    """Where ``part`` is written for ``--out out``: ``out`` itself for the first part, ``out.<part>.onnx`` beside."""
    return out if part == first else out.with_name(f"{out.stem}.{part}{out.suffix or '.onnx'}")


def _write_model(path: Path, model: Any) -> Path:
    return atomic_write_bytes(path, model.SerializeToString())


def export_onnx(held: Any, out: str | os.PathLike[str], quantize: str | None = None, *,
                overwrite: bool = False) -> list[Path]:
    """Write every part of ``held`` (a loaded model) as ONNX to ``out`` and beside it (see the module docstring),
    each file atomically; returns the paths written. A file already there is a :class:`FileExistsError` naming it,
    before anything is written, unless ``overwrite``."""
    if quantize is not None and quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE)} or None, got {quantize!r}")
    out = Path(out)
    models = onnx_models(held)
    if quantize == "int8":
        models = {part: quantize_int8(m) for part, m in models.items()}
    first = next(iter(models))
    writes: dict[Path, Callable[[Path], Path]] = {}  # every file, then checked, then written
    for part, model in models.items():
        writes[part_path(out, part, first)] = functools.partial(_write_model, model=model)
    tokenizer = getattr(held, "tokenizer", None)
    if tokenizer is not None:
        try:
            hf = tokenizer.to_hf() if hasattr(tokenizer, "to_hf") else None
        except NotImplementedError:
            hf = None
        if hf is not None:
            writes[out.with_name(f"{out.stem}.tokenizer.json")] = lambda p: atomic_write_text(p, hf.to_str())
        vocab = "".join(tokenizer.id_to_token(i).replace("\n", " ") + "\n" for i in range(tokenizer.vocab_size))
        writes[out.with_name(f"{out.stem}.vocab.txt")] = lambda p: atomic_write_text(p, vocab)
    if hasattr(held, "item_vectors") and hasattr(held, "catalogue"):
        vectors = np.ascontiguousarray(held.item_vectors(), dtype=np.float32)
        writes[out.with_name(f"{out.stem}.items.npy")] = lambda p: atomic_write_npy(p, vectors)
        writes[out.with_name(f"{out.stem}.items.json")] = lambda p: atomic_write_json(p, list(held.catalogue.ids))
    existing = [str(path) for path in writes if path.exists() or path.is_symlink()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)}: already there; export elsewhere, or overwrite on purpose")
    out.parent.mkdir(parents=True, exist_ok=True)
    return [write(path) for path, write in writes.items()]


def _random_ids(rng: np.random.Generator, batch: int, steps: int, low: int, high: int) -> tuple[np.ndarray,
                                                                                                  np.ndarray]:
    """Ids ``(batch, steps)`` in ``[low, high)`` right-padded with 0 past random lengths 1..steps (the first row
    full), and the lengths, both int64."""
    lengths = rng.integers(1, steps + 1, size=batch)
    lengths[0] = steps
    ids = rng.integers(min(low, high - 1), high, size=(batch, steps))
    ids[np.arange(steps)[None, :] >= lengths[:, None]] = 0
    return ids.astype(np.int64), lengths.astype(np.int64)


def random_inputs(net: torch.nn.Module, batch: int = 32, steps: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    """A padded batch of random ids of mixed lengths (1..``steps``) that ``net``'s exported graphs take."""
    rng = np.random.default_rng(seed)
    if isinstance(net, CrossEncoderModel):  # a query per document; ids from a few tokens, [UNK] among them, so
        high = min(int(net.config.vocab_size), 12)  # that the texts share tokens (exact_match)
        q_ids, q_len = _random_ids(rng, batch, max(steps // 2, 1), 1, high)
        d_ids, d_len = _random_ids(rng, batch, steps, 1, high)
        with torch.no_grad():  # the documents' states, as the ``encoded`` part takes them
            states = net.encode_documents(torch.from_numpy(d_ids), torch.from_numpy(d_len)).float().numpy()
        return {"query_ids": q_ids, "query_lengths": q_len, "doc_ids": d_ids, "doc_lengths": d_len,
                "doc_states": states}
    if isinstance(net, TwoTowerRecommender):
        high, name = int(net.config.n_items) + 1, "history"
    else:
        high, name = int(net.config.tower.vocab_size), "input_ids"  # type: ignore[union-attr,arg-type]
    ids, lengths = _random_ids(rng, batch, steps, 2, high)
    feeds = {name: ids, "lengths": lengths}
    if isinstance(net, TwoTowerRecommender) and net.config.n_user_features > 0:
        feeds["features"] = rng.integers(0, net.config.n_user_features + 1, size=(batch, 3)).astype(np.int64)
    return feeds


def torch_outputs(net: torch.nn.Module, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the PyTorch network answers for ``feeds`` (see :func:`random_inputs`), by part."""
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            if isinstance(net, TwoTowerModel):
                return {side: net.encode(t["input_ids"], t["lengths"], side).numpy() for side in part_names(net)}
            if isinstance(net, TextClassifier):
                return {"classifier": net.probabilities(net(t["input_ids"], t["lengths"])).numpy()}
            if isinstance(net, CrossEncoderModel):
                logits = net(t["query_ids"], t["query_lengths"], t["doc_ids"], t["doc_lengths"])
                encoded = net(t["query_ids"], t["query_lengths"], t["doc_ids"], t["doc_lengths"], t["doc_states"])
                return {"reranker": torch.sigmoid(logits).numpy(),
                        "documents": net.encode_documents(t["doc_ids"], t["doc_lengths"]).numpy(),
                        "encoded": torch.sigmoid(encoded).numpy()}
            assert isinstance(net, TwoTowerRecommender)
            return {"user": net.user_vectors(t["history"], t["lengths"], t.get("features")).numpy()}
    finally:
        net.train(was_training)


def check_export(held: Any, out: str | os.PathLike[str], batch: int = 32) -> dict[str, tuple[float, float]]:
    """Run the files :func:`export_onnx` wrote at ``out`` with onnxruntime and the PyTorch model on the same random
    batch: ``(max abs difference, min cosine)`` per part (the probabilities, for a classifier or a re-ranker: a
    re-ranker's cosine is that of the batch's probabilities as one vector; its documents' states: each document's
    as one vector). An optional part whose file is not there (an export of an earlier deepsem) is left out."""
    from deepsem.deploy.runtime import OnnxRunner

    net = getattr(held, "model", held)
    feeds = random_inputs(net, batch)
    expected = torch_outputs(net, feeds)
    parts = part_names(net)
    out = Path(out)
    report = {}
    for part, want in expected.items():
        file = part_path(out, part, parts[0])
        if part in OPTIONAL_PARTS and not file.exists():
            continue
        got = OnnxRunner(file).run(feeds)
        answer = got[1] if part in ("classifier", "reranker", "encoded") else got[0]
        if answer.ndim == 1:  # a probability per pair: the batch's as one vector
            answer, want = answer[None, :], want[None, :]
        answer, want = answer.reshape(len(answer), -1), want.reshape(len(want), -1)  # a document's states: one row
        cosine = (answer * want).sum(1) / np.maximum(np.linalg.norm(answer, axis=1) * np.linalg.norm(want, axis=1),
                                                     1e-12)
        report[part] = (float(np.abs(answer - want).max()), float(cosine.min()))
    return report
