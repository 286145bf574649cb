"""The ESIM cross-encoder as an ONNX graph (:meth:`CrossEncoderModel.onnx`), run by onnxruntime, against the PyTorch
model: every recurrent cell, with and without the exact-match flags, one query per document or one for all; and the
document cache's two graphs (the documents' states, and the logits from them)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from conftest import shake_peepholes_and_biases

from deepsem.config import CrossEncoderConfig
from deepsem.deploy.export import onnx_models
from deepsem.models.cross_encoder import CrossEncoderModel
from deepsem.towers.recurrent import RECURRENT_ENCODERS

ort = pytest.importorskip("onnxruntime")

TOLERANCE = 1e-5  # fp32 logits: onnxruntime's kernels sum in another order than torch's
VOCAB = 9  # few tokens, so that the texts share some (the exact-match flags) and [UNK] (id 1) occurs


def random_model(encoder: str, exact: bool) -> CrossEncoderModel:
    torch.manual_seed(zlib.crc32(f"{encoder}/{exact}".encode()))  # not hash(): salted per process
    config = CrossEncoderConfig(vocab_size=VOCAB, embedding_dim=8, hidden_size=6, encoder=encoder, exact_match=exact,
                                dropout=0.0, embedding_dropout=0.0)
    return shake_peepholes_and_biases(CrossEncoderModel(config).eval())  # type: ignore[return-value]


def padded(rows: int, steps: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids in 1..VOCAB-1 right-padded with 0; lengths 1..steps (the first row full, the last 1)."""
    ids = torch.randint(1, VOCAB, (rows, steps), generator=generator)
    lengths = torch.randint(1, steps + 1, (rows,), generator=generator)
    lengths[0], lengths[-1] = steps, 1
    ids[torch.arange(steps)[None, :] >= lengths[:, None]] = 0
    return ids, lengths


def run_both(model: CrossEncoderModel, session: ort.InferenceSession, q: tuple[torch.Tensor, torch.Tensor],
             d: tuple[torch.Tensor, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        want = model(q[0], q[1], d[0], d[1]).numpy()
    feeds = {"query_ids": q[0].numpy(), "query_lengths": q[1].numpy(), "doc_ids": d[0].numpy(),
             "doc_lengths": d[1].numpy()}
    logits, probabilities, states = session.run(None, feeds)
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-logits)), rtol=1e-6)
    with torch.no_grad():  # the documents' states, beside the logits
        np.testing.assert_allclose(states, model.encode_documents(d[0], d[1]).numpy(), atol=TOLERANCE, rtol=0)
    return logits, want


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("encoder", RECURRENT_ENCODERS)
def test_the_graph_gives_the_models_logits(encoder: str, exact: bool) -> None:
    model = random_model(encoder, exact)
    session = ort.InferenceSession(onnx_models(model)["reranker"].SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(3)
    for batch, q_steps, d_steps in [(7, 5, 11), (3, 9, 4), (1, 1, 1), (16, 12, 23)]:  # dynamic axes
        logits, want = run_both(model, session, padded(batch, q_steps, generator), padded(batch, d_steps, generator))
        assert logits.shape == (batch,)
        np.testing.assert_allclose(logits, want, atol=TOLERANCE, rtol=0)
        query = padded(1, q_steps, generator)  # one query for every document, as re-ranking runs it
        logits, want = run_both(model, session, query, padded(batch, d_steps, generator))
        np.testing.assert_allclose(logits, want, atol=TOLERANCE, rtol=0)


def test_a_length_below_one_reads_as_the_pad_token() -> None:
    model = random_model("lstm-peephole", True)
    session = ort.InferenceSession(onnx_models(model)["reranker"].SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    q = (torch.tensor([[3, 4, 0], [0, 0, 0]]), torch.tensor([2, 0]))
    d = (torch.tensor([[0, 0], [5, 3]]), torch.tensor([0, 2]))
    logits, want = run_both(model, session, q, d)
    np.testing.assert_allclose(logits, want, atol=TOLERANCE, rtol=0)
    assert np.isfinite(logits).all()


def test_exact_match_flags_change_the_answer() -> None:
    """The flags are in the graph: the same weights with the flag inputs' weights changed give other logits."""
    model = random_model("lstm", True)
    before = onnx_models(model)["reranker"].SerializeToString()
    with torch.no_grad():
        model.projection[0].weight[:, -1] += 3.0  # the flag's column
    after = onnx_models(model)["reranker"].SerializeToString()
    q = (torch.tensor([[3, 4, 5]]), torch.tensor([3]))
    d = (torch.tensor([[3, 6, 7, 4], [6, 7, 8, 2]]), torch.tensor([4, 4]))
    feeds = {"query_ids": q[0].numpy(), "query_lengths": q[1].numpy(), "doc_ids": d[0].numpy(),
             "doc_lengths": d[1].numpy()}
    first, second = (ort.InferenceSession(b, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
                     for b in (before, after))
    # document 0 shares tokens 3 and 4 with the query; a change 10x the parity tolerance, so that the parity below
    # fails if the graph ignores the flags
    assert abs(first[0] - second[0]) > 10 * TOLERANCE
    logits, want = run_both(model, ort.InferenceSession(after, providers=["CPUExecutionProvider"]), q, d)
    np.testing.assert_allclose(logits, want, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("encoder", RECURRENT_ENCODERS)
def test_the_document_cache_graphs_give_the_models_states_and_logits(encoder: str, exact: bool) -> None:
    model = random_model(encoder, exact)
    graphs = onnx_models(model)
    documents, encoded = (ort.InferenceSession(graphs[part].SerializeToString(), providers=["CPUExecutionProvider"])
                          for part in ("documents", "encoded"))
    generator = torch.Generator().manual_seed(5)
    for batch, q_rows, q_steps, d_steps in [(7, 7, 5, 11), (6, 1, 4, 3), (1, 1, 1, 1)]:
        q, d = padded(q_rows, q_steps, generator), padded(batch, d_steps, generator)
        with torch.no_grad():
            want_states = model.encode_documents(d[0], d[1]).numpy()
            want = model(q[0], q[1], d[0], d[1]).numpy()
        states, = documents.run(None, {"doc_ids": d[0].numpy(), "doc_lengths": d[1].numpy()})
        np.testing.assert_allclose(states, want_states, atol=TOLERANCE, rtol=0)
        logits, probabilities = encoded.run(None, {"query_ids": q[0].numpy(), "query_lengths": q[1].numpy(),
                                                   "doc_ids": d[0].numpy(), "doc_lengths": d[1].numpy(),
                                                   "doc_states": states})
        np.testing.assert_allclose(logits, want, atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-logits)), rtol=1e-6)
