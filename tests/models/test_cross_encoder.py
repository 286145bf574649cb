"""The ESIM cross-encoder: its attention against a reference written here, padding invariance, gradients, order."""

from __future__ import annotations

import pytest
import torch

from deepsem.config import ConfigError, CrossEncoderConfig
from deepsem.models.cross_encoder import CrossEncoderModel, exact_match, mean_max, soft_align


def tiny(**overrides: object) -> CrossEncoderModel:
    torch.manual_seed(0)
    settings = {"vocab_size": 30, "embedding_dim": 8, "hidden_size": 6, "dropout": 0.0, "embedding_dropout": 0.0,
                **overrides}
    return CrossEncoderModel(CrossEncoderConfig(**settings)).eval()  # type: ignore[arg-type]


def reference_align(a: torch.Tensor, b: torch.Tensor, la: list[int], lb: list[int]) -> tuple[torch.Tensor, ...]:
    """Soft alignment one pair at a time, on the real steps only (no mask needed): einsum + softmax."""
    out_a, out_b = torch.zeros_like(a), torch.zeros_like(b)
    for i, (na, nb) in enumerate(zip(la, lb, strict=True)):
        x, y = a[i, :na], b[i, :nb]
        e = torch.einsum("sd,td->st", x, y)
        out_a[i, :na] = torch.einsum("st,td->sd", torch.exp(e) / torch.exp(e).sum(1, keepdim=True), y)
        out_b[i, :nb] = torch.einsum("st,sd->td", torch.exp(e) / torch.exp(e).sum(0, keepdim=True), x)
    return out_a, out_b


def test_soft_align_matches_a_per_pair_reference() -> None:
    torch.manual_seed(1)
    a, b = torch.randn(3, 5, 4, dtype=torch.float64), torch.randn(3, 7, 4, dtype=torch.float64)
    la, lb = [5, 2, 1], [3, 7, 1]
    mask_a = torch.arange(5)[None] < torch.tensor(la)[:, None]
    mask_b = torch.arange(7)[None] < torch.tensor(lb)[:, None]
    got_a, got_b = soft_align(a, b, mask_a, mask_b)
    want_a, want_b = reference_align(a, b, la, lb)
    torch.testing.assert_close(got_a[mask_a], want_a[mask_a])
    torch.testing.assert_close(got_b[mask_b], want_b[mask_b])


def test_mean_max_ignores_padding() -> None:
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    pooled = mean_max(x, torch.tensor([[True, True, False]]))
    torch.testing.assert_close(pooled, torch.tensor([[2.0, 3.0]]))


@pytest.mark.parametrize("flags", [False, True])
def test_a_pairs_score_does_not_depend_on_padding_or_other_rows(flags: bool) -> None:
    model = tiny(exact_match=flags)
    q, d = torch.tensor([[3, 4, 5]]), torch.tensor([[6, 5, 8, 3]])  # 3 and 5 in both: flags set
    alone = model(q, torch.tensor([3]), d, torch.tensor([4]))
    # the same pair padded to 9 steps, beside longer and shorter rows
    q_pad = torch.zeros(3, 9, dtype=torch.long)
    d_pad = torch.zeros(3, 9, dtype=torch.long)
    q_pad[0, :9], d_pad[0, :2] = torch.arange(1, 10), torch.tensor([2, 2])
    q_pad[1, :3], d_pad[1, :4] = q[0], d[0]
    q_pad[2, :1], d_pad[2, :9] = torch.tensor([7]), torch.arange(11, 20)
    batched = model(q_pad, torch.tensor([9, 3, 1]), d_pad, torch.tensor([2, 4, 9]))
    torch.testing.assert_close(batched[1], alone[0], atol=1e-5, rtol=1e-5)
    with torch.inference_mode():  # the LSTM's inference loop gives the same
        torch.testing.assert_close(model(q_pad, torch.tensor([9, 3, 1]), d_pad, torch.tensor([2, 4, 9]))[1],
                                   alone[0].detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("encoder", ["lstm-peephole", "lstm-coupled"])
def test_gradients_match_finite_differences(encoder: str) -> None:
    model = tiny(encoder=encoder, vocab_size=5, embedding_dim=3, hidden_size=2).double()
    q = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    d = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    q_len, d_len = torch.tensor([3, 2]), torch.tensor([1, 4])
    assert torch.autograd.gradcheck(lambda x, y: model.interact(x, q_len, y, d_len), (q, d))
    # and the parameters: the logit's gradient for one weight of each LSTM against a central difference
    for name in ("encoder.weight_hh_l0", "composition.weight_ih_l0_reverse"):
        weight = dict(model.named_parameters())[name]
        model.zero_grad()
        model.interact(q, q_len, d, d_len).sum().backward()
        analytic = weight.grad[0, 0].item()  # type: ignore[index]
        with torch.no_grad():
            weight[0, 0] += 1e-6
            up = model.interact(q, q_len, d, d_len).sum().item()
            weight[0, 0] -= 2e-6
            down = model.interact(q, q_len, d, d_len).sum().item()
            weight[0, 0] += 1e-6
        assert analytic == pytest.approx((up - down) / 2e-6, rel=1e-4, abs=1e-8)


def test_swapping_query_and_document_may_change_the_score() -> None:
    """Not a symmetry the model promises: the pooled vector is [query; document] and the MLP reads it in order."""
    model = tiny()
    a, b = torch.tensor([[3, 4, 5]]), torch.tensor([[6, 7, 8, 9]])
    forward = model(a, torch.tensor([3]), b, torch.tensor([4]))
    swapped = model(b, torch.tensor([4]), a, torch.tensor([3]))
    assert not torch.allclose(forward, swapped)


def test_config_is_validated_and_round_trips() -> None:
    config = CrossEncoderConfig(vocab_size=100, threshold=0.4)
    assert CrossEncoderConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="encoder"):
        CrossEncoderConfig.from_dict({"encoder": "cnn"})
    with pytest.raises(ConfigError, match="dropout"):
        CrossEncoderConfig.from_dict({"dropout": 1.0})
    with pytest.raises(ConfigError, match="too large"):
        CrossEncoderConfig.from_dict({"vocab_size": 40_000_000, "embedding_dim": 16_000})


@pytest.mark.parametrize("flags", [False, True])
def test_one_query_against_many_documents_equals_the_query_repeated(flags: bool) -> None:
    model = tiny(exact_match=flags)
    q = torch.tensor([[3, 4, 5, 0]])
    d = torch.tensor([[6, 4, 0, 0, 0], [8, 9, 10, 3, 5], [2, 0, 0, 0, 0]])
    d_len = torch.tensor([2, 5, 1])
    shared = model(q, torch.tensor([3]), d, d_len)
    repeated = model(q.expand(3, -1), torch.tensor([3, 3, 3]), d, d_len)
    torch.testing.assert_close(shared, repeated, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("flags", [False, True])
@pytest.mark.parametrize("encoder", ["lstm-peephole", "gru"])
def test_documents_encoded_ahead_give_the_same_logits(encoder: str, flags: bool) -> None:
    """What the document cache relies on: a document's encoder states do not depend on the query or on the other
    documents of its batch, and passed back (d_states) they give forward()'s logits."""
    model = tiny(exact_match=flags, encoder=encoder)
    d = torch.tensor([[6, 4, 0, 0, 0], [8, 9, 10, 3, 5], [2, 0, 0, 0, 0]])
    d_len = torch.tensor([2, 5, 1])
    with torch.no_grad():
        states = model.encode_documents(d, d_len)
        assert states.shape == (3, 5, 12) and not states[0, 2:].any() and not states[2, 1:].any()
        for i in range(3):  # each document alone, unpadded: the same states
            alone = model.encode_documents(d[i : i + 1, : int(d_len[i])], d_len[i : i + 1])
            torch.testing.assert_close(alone[0], states[i, : int(d_len[i])], atol=1e-6, rtol=1e-6)
        for q, q_len in [(torch.tensor([[3, 4, 5, 0]]), torch.tensor([3])),  # one query for every document
                         (torch.tensor([[3, 4, 0], [7, 0, 0], [5, 6, 8]]), torch.tensor([2, 1, 3]))]:
            torch.testing.assert_close(model(q, q_len, d, d_len, states), model(q, q_len, d, d_len),
                                       atol=1e-6, rtol=1e-6)
            logits, from_pass = model.score_and_encode(q, q_len, d, d_len)  # the states of the scoring pass
            torch.testing.assert_close(logits, model(q, q_len, d, d_len), atol=0, rtol=0)
            torch.testing.assert_close(from_pass, states, atol=1e-6, rtol=1e-6)


def test_exact_match_flags_each_real_token_found_in_the_other_text() -> None:
    """Against sets of ids, pair by pair: [PAD] (0) and [UNK] (1) match nothing, padding steps are 0."""
    q = torch.tensor([[3, 4, 1, 0], [7, 7, 2, 9]])
    d = torch.tensor([[4, 1, 0, 3, 0], [9, 0, 0, 0, 0]])
    q_len, d_len = torch.tensor([3, 4]), torch.tensor([2, 1])
    q_mask = torch.arange(4)[None] < q_len[:, None]
    d_mask = torch.arange(5)[None] < d_len[:, None]
    got_q, got_d = exact_match(q, q_mask, d, d_mask)
    for i in range(2):
        real_q, real_d = q[i, : q_len[i]].tolist(), d[i, : d_len[i]].tolist()
        want_q = [float(t > 1 and t in real_d) for t in real_q] + [0.0] * (4 - len(real_q))
        want_d = [float(t > 1 and t in real_q) for t in real_d] + [0.0] * (5 - len(real_d))
        assert got_q[i].tolist() == want_q and got_d[i].tolist() == want_d
    # one query against two documents: its flags per document
    one_q, one_d = exact_match(q[:1], q_mask[:1], d, d_mask)
    assert one_q.tolist() == [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]] and one_d.shape == (2, 5)


def test_exact_match_changes_the_model_and_old_configs_load_without_it() -> None:
    assert CrossEncoderConfig.from_dict({"vocab_size": 30}).exact_match is False  # config.json written before it
    with_flags = tiny(exact_match=True)
    assert with_flags.projection[0].in_features == 8 * 6 + 1
    q, d = torch.tensor([[3, 4, 5]]), torch.tensor([[5, 4, 9]])
    with pytest.raises(ValueError, match="token ids"):
        with_flags.interact(with_flags.embedding(q), torch.tensor([3]), with_flags.embedding(d), torch.tensor([3]))
    # the flag's weights read the overlap: zeroing them changes the logit of an overlapping pair only
    before = with_flags(q, torch.tensor([3]), d, torch.tensor([3]))
    no_overlap = with_flags(q, torch.tensor([3]), torch.tensor([[7, 8, 9]]), torch.tensor([3]))
    with torch.no_grad():
        with_flags.projection[0].weight[:, -1] = 0.0
    assert not torch.allclose(with_flags(q, torch.tensor([3]), d, torch.tensor([3])), before)
    torch.testing.assert_close(with_flags(q, torch.tensor([3]), torch.tensor([[7, 8, 9]]), torch.tensor([3])),
                               no_overlap)
