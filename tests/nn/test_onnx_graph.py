"""Every tower as an ONNX graph, run by onnxruntime, against the PyTorch tower on padded batches of mixed lengths."""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest
import torch
from conftest import shake_peepholes_and_biases

from deepsem.config import TowerConfig
from deepsem.nn.onnx import Graph
from deepsem.towers import build_tower
from deepsem.towers.recurrent import RECURRENT_ENCODERS

ort = pytest.importorskip("onnxruntime")

POOLINGS = ("last", "max", "mean", "last+max")
TOLERANCE = 1e-5  # fp32: onnxruntime's kernels sum in another order than torch's


def tower_graph(tower: torch.nn.Module, dim: int) -> tuple[Graph, ort.InferenceSession]:
    g = Graph()
    ids, lengths = g.input("input_ids", "int64", ["batch", "length"]), g.input("lengths", "int64", ["batch"])
    g.output(g.l2_normalize(tower.onnx(g, ids, lengths)), "embedding", "float", ["batch", dim])
    return g, ort.InferenceSession(g.model().SerializeToString(), providers=["CPUExecutionProvider"])


def random_tower(encoder: str, bidirectional: bool = False, pooling: str = "last", layers: int = 1,
                 vocab: int = 60) -> torch.nn.Module:
    torch.manual_seed(zlib.crc32(f"{encoder}/{bidirectional}/{pooling}/{layers}".encode()))  # hash() is salted
    config = TowerConfig(encoder=encoder, vocab_size=vocab, embedding_dim=8, hidden_size=6, num_layers=layers,
                         output_dim=5, bidirectional=bidirectional, pooling=pooling)
    return shake_peepholes_and_biases(build_tower(config).eval())


def padded_batch(batch: int, steps: int, vocab: int, seed: int, separators: bool) -> tuple[torch.Tensor, torch.Tensor]:
    rng = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, steps), generator=rng)
    if separators:  # the trigram towers' word separator, id 2
        ids[torch.rand(batch, steps, generator=rng) < 0.3] = 2
    lengths = torch.randint(1, steps + 1, (batch,), generator=rng)
    lengths[0], lengths[-1] = steps, 1
    ids[torch.arange(steps)[None, :] >= lengths[:, None]] = 0
    return ids, lengths


def assert_same(tower: torch.nn.Module, session: ort.InferenceSession, separators: bool = False) -> None:
    for seed, (batch, steps) in enumerate([(7, 11), (3, 4), (1, 1), (16, 23)]):  # dynamic batch and length axes
        ids, lengths = padded_batch(batch, steps, tower.config.vocab_size, seed, separators)
        with torch.no_grad():
            want = torch.nn.functional.normalize(tower(ids, lengths), dim=-1).numpy()
        got = session.run(None, {"input_ids": ids.numpy(), "lengths": lengths.numpy()})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize(("encoder", "bidirectional", "pooling"),
                         list(itertools.product(RECURRENT_ENCODERS, (False, True), POOLINGS)))
def test_recurrent_tower_matches_torch(encoder: str, bidirectional: bool, pooling: str):
    tower = random_tower(encoder, bidirectional, pooling)
    _, session = tower_graph(tower, 5)
    assert_same(tower, session)


@pytest.mark.parametrize("encoder", RECURRENT_ENCODERS)
def test_two_layer_bidirectional_tower_matches_torch(encoder: str):
    tower = random_tower(encoder, True, "last+max", layers=2)
    _, session = tower_graph(tower, 5)
    assert_same(tower, session)


@pytest.mark.parametrize(("encoder", "layers"), [("dssm", 1), ("dssm", 3), ("cnn", 1)])
def test_trigram_towers_match_torch(encoder: str, layers: int):
    tower = random_tower(encoder, layers=layers)
    _, session = tower_graph(tower, 5)
    assert_same(tower, session, separators=True)


@pytest.mark.parametrize(("encoder", "operator", "peepholes", "coupled"),
                         [("lstm", "LSTM", False, False), ("lstm-peephole", "LSTM", True, False),
                          ("lstm-coupled", "LSTM", False, True), ("gru", "GRU", False, False),
                          ("rnn", "RNN", False, False)])
def test_recurrent_nets_map_onto_onnx_operators(encoder: str, operator: str, peepholes: bool, coupled: bool):
    """One ONNX recurrent operator per layer, not an unrolled loop: any length, the runtime's fused kernel."""
    g, _ = tower_graph(random_tower(encoder, layers=2), 5)
    nodes = [(op, ins, attrs) for op, ins, _, attrs in g.nodes if op in ("LSTM", "GRU", "RNN", "Loop", "Scan")]
    assert [op for op, _, _ in nodes] == [operator, operator]
    for _, inputs, attributes in nodes:
        assert (len(inputs) == 8 and inputs[7] != "") == peepholes  # P, the peephole weights
        assert attributes.get("input_forget", 0) == int(coupled)


def test_coupled_gate_differs_from_the_uncoupled_one():
    """The coupled mapping is not a no-op: the same weights run as an uncoupled LSTM give other vectors."""
    tower = random_tower("lstm-coupled")
    _g, session = tower_graph(tower, 5)
    ids, lengths = padded_batch(5, 9, 60, 0, False)
    coupled = session.run(None, {"input_ids": ids.numpy(), "lengths": lengths.numpy()})[0]
    tower.rnn.coupled = False
    _, plain = tower_graph(tower, 5)
    uncoupled = plain.run(None, {"input_ids": ids.numpy(), "lengths": lengths.numpy()})[0]
    assert np.abs(coupled - uncoupled).max() > 1e-3


def test_graph_refuses_an_unknown_recurrent_net():
    from deepsem.nn.onnx import rnn

    with pytest.raises(TypeError, match="no ONNX form"):
        rnn(Graph(), torch.nn.LSTM(4, 4), "x", "lengths")
