"""Tests of deepsem.nn.lstm: gate arithmetic by hand, equality with torch.nn.LSTM, gradients, padding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from deepsem.nn import lstm as lstm_module
from deepsem.nn.lstm import LSTM, lstm_cell, lstm_layer

VARIANTS = {
    "plain": {},
    "peephole": {"peephole": True},
    "coupled": {"coupled": True},
    "peephole+coupled": {"peephole": True, "coupled": True},
}


def _randomize_peepholes(module: LSTM, scale: float = 0.5) -> None:
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.startswith(("weight_ci", "weight_cf", "weight_co")):
                param.uniform_(-scale, scale)


def _pair(options: dict[str, bool], dtype: torch.dtype = torch.float64, **kw: object) -> tuple[LSTM, LSTM]:
    """A fast module and its autograd reference with the same (random, peepholes included) weights."""
    fast = LSTM(**kw, **options, dtype=dtype)  # type: ignore[arg-type]
    _randomize_peepholes(fast)
    with torch.no_grad():  # non-trivial biases too
        for name, param in fast.named_parameters():
            if name.startswith("bias"):
                param.uniform_(-0.5, 0.5)
    ref = LSTM(**kw, **options, backward="autograd", dtype=dtype)  # type: ignore[arg-type]
    ref.load_state_dict(fast.state_dict())
    return fast, ref


# --------------------------------------------------------------------------------------------------------
# A two-step example by hand
# --------------------------------------------------------------------------------------------------------

# E = 2 inputs, H = 2 hidden units; rows of each gate block in torch's order i, f, g (= C~), o.
W_IH = np.array(
    [
        [0.5, -0.3], [0.1, 0.2],  # i
        [-0.4, 0.6], [0.3, 0.3],  # f
        [0.7, 0.1], [-0.2, 0.5],  # g
        [0.2, -0.6], [0.4, 0.1],  # o
    ]
)  # fmt: skip
W_HH = np.array(
    [
        [0.3, 0.1], [-0.2, 0.4],  # i
        [0.1, -0.5], [0.6, 0.2],  # f
        [-0.3, 0.2], [0.5, -0.1],  # g
        [0.2, 0.3], [-0.4, 0.2],  # o
    ]
)  # fmt: skip
B_IH = np.array([0.1, -0.1, 1.0, 0.5, 0.0, 0.2, -0.2, 0.3])
B_HH = np.array([0.05, 0.0, -0.1, 0.1, 0.1, -0.05, 0.0, 0.1])
W_CI, W_CF, W_CO = np.array([0.3, -0.2]), np.array([-0.4, 0.5]), np.array([0.6, 0.1])
XS = [np.array([1.0, -0.5]), np.array([0.3, 0.8])]
H0, C0 = np.array([0.1, -0.2]), np.array([0.5, -0.3])


def _sigma(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _hand_steps(peephole: bool, coupled: bool) -> list[dict[str, np.ndarray]]:
    """The equations of Gers & Schmidhuber / Palangi et al., W_* [h_{t-1}, x_t] + b_* per gate."""
    h, c = H0, C0
    steps = []
    for x in XS:
        hx = np.concatenate([h, x])  # [h_{t-1}, x_t]

        def gate(k: int, hx: np.ndarray = hx) -> np.ndarray:
            w = np.concatenate([W_HH[2 * k : 2 * k + 2], W_IH[2 * k : 2 * k + 2]], axis=1)  # W_k = [W_hk, W_xk]
            return w @ hx + B_IH[2 * k : 2 * k + 2] + B_HH[2 * k : 2 * k + 2]

        f = _sigma(gate(1) + (W_CF * c if peephole else 0.0))
        i = 1.0 - f if coupled else _sigma(gate(0) + (W_CI * c if peephole else 0.0))
        g = np.tanh(gate(2))
        c = f * c + i * g
        o = _sigma(gate(3) + (W_CO * c if peephole else 0.0))
        h = o * np.tanh(c)
        steps.append({"i": i, "f": f, "g": g, "o": o, "c": c, "h": h})
    return steps


def _hand_module(options: dict[str, bool], backward: str) -> LSTM:
    module = LSTM(2, 2, **options, backward=backward, dtype=torch.float64)  # type: ignore[arg-type]
    state = {
        "weight_ih_l0": W_IH,
        "weight_hh_l0": W_HH,
        "bias_ih_l0": B_IH,
        "bias_hh_l0": B_HH,
    }
    if options.get("peephole"):
        state.update({"weight_ci_l0": W_CI, "weight_cf_l0": W_CF, "weight_co_l0": W_CO})
    module.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    return module


def test_hand_example_numbers() -> None:
    """Pin a few numbers of the hand computation so the numpy formulas themselves cannot drift."""
    first = _hand_steps(peephole=False, coupled=False)[0]
    # i_1 unit 0: σ(0.3*0.1 + 0.1*(-0.2) + 0.5*1 + (-0.3)(-0.5) + 0.1 + 0.05) = σ(0.81)
    assert first["i"][0] == pytest.approx(1.0 / (1.0 + math.exp(-0.81)))
    # C~_1 unit 0: tanh(-0.3*0.1 + 0.2*(-0.2) + 0.7*1 + 0.1*(-0.5) + 0.0 + 0.1) = tanh(0.68)
    assert first["g"][0] == pytest.approx(math.tanh(0.68))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_steps_by_hand(variant: str) -> None:
    options = VARIANTS[variant]
    expected = _hand_steps(options.get("peephole", False), options.get("coupled", False))
    x = torch.tensor(np.stack(XS)).unsqueeze(1)  # (T=2, B=1, E=2)
    hx = (torch.tensor(H0).view(1, 1, 2), torch.tensor(C0).view(1, 1, 2))

    # Every gate of both steps, through the reference cell.
    ref = _hand_module(options, "autograd")
    peeps = (ref.weight_ci_l0, ref.weight_cf_l0, ref.weight_co_l0) if options.get("peephole") else (None,) * 3
    h, c = hx[0][0], hx[1][0]
    for t, want in enumerate(expected):
        cell = lstm_cell(
            x[t], h, c, ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0, *peeps,
            coupled=options.get("coupled", False),
        )  # fmt: skip
        for name in ("i", "f", "g", "o", "c", "h"):
            np.testing.assert_allclose(getattr(cell, name).detach().numpy()[0], want[name], rtol=0, atol=1e-12)
        h, c = cell.h, cell.c

    # Both steps through every implementation of the module (with and without autograd recording).
    for backward in ("bptt", "autograd"):
        module = _hand_module(options, backward)
        for grad in (True, False):
            with torch.set_grad_enabled(grad):
                out, (h_n, c_n) = module(x, hx)
            for t, want in enumerate(expected):
                np.testing.assert_allclose(out[t, 0].detach().numpy(), want["h"], rtol=0, atol=1e-12)
            np.testing.assert_allclose(h_n[0, 0].detach().numpy(), expected[-1]["h"], rtol=0, atol=1e-12)
            np.testing.assert_allclose(c_n[0, 0].detach().numpy(), expected[-1]["c"], rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------------------
# Same as torch.nn.LSTM
# --------------------------------------------------------------------------------------------------------


def _torch_and_ours(bidirectional: bool, batch_first: bool, **options: object) -> tuple[torch.nn.LSTM, LSTM]:
    torch.manual_seed(0)
    kw = {"num_layers": 2, "bidirectional": bidirectional, "batch_first": batch_first}
    theirs = torch.nn.LSTM(5, 7, **kw)  # type: ignore[arg-type]
    ours = LSTM(5, 7, **kw, **options)  # type: ignore[arg-type]
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=not options.get("peephole"))
    assert not unexpected and all(k.startswith(("weight_ci", "weight_cf", "weight_co")) for k in missing)
    return theirs, ours


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize(
    "options",
    [{}, {"backward": "autograd"}, {"peephole": True}],  # fused kernel, reference loop, BPTT (zero peepholes)
    ids=["fused", "autograd", "bptt-peephole0"],
)
def test_equals_torch_lstm(bidirectional: bool, batch_first: bool, options: dict[str, object]) -> None:
    theirs, ours = _torch_and_ours(bidirectional, batch_first, **options)
    shape = (4, 9, 5) if batch_first else (9, 4, 5)
    x = torch.randn(shape)
    states = 2 * (2 if bidirectional else 1)
    hx = (torch.randn(states, 4, 7), torch.randn(states, 4, 7))
    for args in ((x,), (x, hx)):
        want, (want_h, want_c) = theirs(*args)
        got, (got_h, got_c) = ours(*args)
        assert got.shape == want.shape and got_h.shape == want_h.shape and got_c.shape == want_c.shape
        assert (got - want).abs().max() <= 1e-6
        assert (got_h - want_h).abs().max() <= 1e-6
        assert (got_c - want_c).abs().max() <= 1e-6


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("options", [{}, {"backward": "autograd"}, {"peephole": True}], ids=["fused", "ag", "bptt"])
def test_lengths_equal_torch_packed(bidirectional: bool, options: dict[str, object]) -> None:
    theirs, ours = _torch_and_ours(bidirectional, True, **options)
    x = torch.randn(4, 9, 5)
    lengths = torch.tensor([3, 9, 1, 6])
    packed_out, (want_h, want_c) = theirs(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    want, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=9)
    got, (got_h, got_c) = ours(x, lengths=lengths)
    assert (got - want).abs().max() <= 1e-6
    assert (got_h - want_h).abs().max() <= 1e-6
    assert (got_c - want_c).abs().max() <= 1e-6


def test_state_dict_copies_both_ways() -> None:
    torch.manual_seed(1)
    theirs = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(6, 2, 3)

    ours = LSTM(3, 4, num_layers=2, bidirectional=True)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())  # torch -> ours, strict
    assert (ours(x)[0] - theirs(x)[0]).abs().max() <= 1e-6

    other = LSTM(3, 4, num_layers=2, bidirectional=True)
    back = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    back.load_state_dict(other.state_dict())  # ours -> torch, strict
    assert (back(x)[0] - other(x)[0]).abs().max() <= 1e-6

    peep = LSTM(3, 4, num_layers=2, bidirectional=True, peephole=True)  # zero peepholes
    result = back.load_state_dict(peep.state_dict(), strict=False)  # ours (with peepholes) -> torch
    assert not result.missing_keys
    assert sorted(result.unexpected_keys) == sorted(k for k in peep.state_dict() if k.startswith("weight_c"))
    assert {k for k in peep.state_dict() if k.startswith("weight_c")} >= {"weight_ci_l0", "weight_co_l1_reverse"}
    assert (back(x)[0] - peep(x)[0]).abs().max() <= 1e-6


# --------------------------------------------------------------------------------------------------------
# Gradients of the hand-written backward
# --------------------------------------------------------------------------------------------------------


def _module_function(module: LSTM, lengths: torch.Tensor | None):
    names = [name for name, _ in module.named_parameters()]

    def run(x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, *params: torch.Tensor):
        out, (h_n, c_n) = functional_call(module, dict(zip(names, params, strict=True)), (x, (h0, c0), lengths))
        return out, h_n, c_n

    return run, [p.detach().clone().requires_grad_(True) for p in module.parameters()]


@pytest.mark.parametrize("variant", ["peephole", "coupled", "peephole+coupled"])
def test_gradcheck_module(variant: str) -> None:
    torch.manual_seed(2)
    module, _ = _pair(VARIANTS[variant], input_size=3, hidden_size=2, num_layers=2, bidirectional=True)
    lengths = torch.tensor([4, 2, 3])
    run, params = _module_function(module, lengths)
    x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(run, (x, h0, c0, *params))


@pytest.mark.parametrize("variant", ["plain", "peephole", "coupled", "peephole+coupled"])
def test_gradcheck_layer_blocks(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The layer function alone, several blocks of steps (tiny block size), with ``last`` and every output."""
    monkeypatch.setattr(lstm_module, "_CHUNK_BYTES", 2 * 3 * 8 * 8)  # two steps a block, a partial last one
    torch.manual_seed(3)
    options = VARIANTS[variant]
    hidden, gates = 2, 3 if options.get("coupled") else 4
    x = torch.randn(5, 3, 2, dtype=torch.float64, requires_grad=True)
    w_ih = torch.randn(gates * hidden, 2, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(gates * hidden, hidden, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(gates * hidden, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, hidden, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(3, hidden, dtype=torch.float64, requires_grad=True)
    inputs = [x, h0, c0, w_ih, w_hh, bias]
    if options.get("peephole"):
        inputs.append(torch.randn(gates - 1, hidden, dtype=torch.float64, requires_grad=True))
    coupled = options.get("coupled", False)
    for last in (None, torch.tensor([4, 1, 2])):

        def run(*args: torch.Tensor, last: torch.Tensor | None = last) -> tuple[torch.Tensor, ...]:
            peep = args[6] if len(args) > 6 else None
            return lstm_layer(*args[:6], peep=peep, coupled=coupled, last=last)

        assert torch.autograd.gradcheck(run, tuple(inputs))


@pytest.mark.parametrize("variant", ["peephole", "coupled", "peephole+coupled"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_bptt_matches_autograd(variant: str, bidirectional: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lstm_module, "_CHUNK_BYTES", 3 * 5 * 4 * 6 * 8)  # blocks of three steps
    # inference: blocks of three steps (six with one direction), a partial last one
    monkeypatch.setattr(lstm_module, "_INFERENCE_CHUNK_BYTES", 2 * 3 * 5 * 4 * 6 * 8)
    torch.manual_seed(4)
    fast, ref = _pair(VARIANTS[variant], input_size=4, hidden_size=6, num_layers=2, bidirectional=bidirectional)
    x = torch.randn(5, 8, 4, dtype=torch.float64)  # batch-first (B=5, T=8)
    fast.batch_first = ref.batch_first = True
    lengths = [8, 3, 5, 1, 7]
    results = []
    for module in (fast, ref):
        xg = x.clone().requires_grad_(True)
        out, (h_n, c_n) = module(xg, lengths=lengths)
        loss = (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).square().sum()
        (loss + h_n.sin().sum() + c_n.cos().sum()).backward()
        grads = {name: p.grad for name, p in module.named_parameters() if p.grad is not None}
        results.append((out, h_n, c_n, xg.grad, grads))
    (out_f, h_f, c_f, gx_f, g_f), (out_r, h_r, c_r, gx_r, g_r) = results
    with torch.no_grad():  # the inference loop (one reused block buffer) gives the same
        out_n, (h_nograd, c_nograd) = fast(x, lengths=lengths)
    for got, want in ((out_n, out_f), (h_nograd, h_f), (c_nograd, c_f)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-14)
    with torch.no_grad():  # and without lengths (no cells kept)
        for got, want in zip(_flat(fast(x)), _flat(ref(x)), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    for got, want in ((out_f, out_r), (h_f, h_r), (c_f, c_r), (gx_f, gx_r)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert set(g_f) == set(g_r)
    for name in g_f:
        torch.testing.assert_close(g_f[name], g_r[name], rtol=1e-9, atol=1e-12, msg=name)


def _flat(result: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
    out, (h_n, c_n) = result
    return out, h_n, c_n


def test_coupled_ignores_input_gate_rows() -> None:
    torch.manual_seed(5)
    module = LSTM(3, 4, coupled=True, peephole=True)
    _randomize_peepholes(module)
    x = torch.randn(5, 2, 3)
    out, _ = module(x)
    out.square().sum().backward()
    assert module.weight_ih_l0.grad is not None and module.weight_hh_l0.grad is not None
    assert module.weight_ih_l0.grad[:4].abs().max() == 0 and module.weight_hh_l0.grad[:4].abs().max() == 0
    assert module.weight_ih_l0.grad[4:].abs().max() > 0
    with torch.no_grad():
        before = module(x)[0]  # the inference loop: the same numbers up to the order of float sums
        torch.testing.assert_close(before, out, rtol=0, atol=1e-6)
        module.weight_ih_l0[:4].normal_()
        module.weight_ci_l0.normal_()
        assert torch.equal(module(x)[0], before)  # the new parameter versions were picked up, and changed nothing
    out_again, _ = module(x)
    assert torch.equal(out_again, out)


# --------------------------------------------------------------------------------------------------------
# Padding
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_padding_invariance(variant: str, bidirectional: bool, grad: bool) -> None:
    torch.manual_seed(6)
    module = LSTM(6, 8, num_layers=2, bidirectional=bidirectional, batch_first=True, **VARIANTS[variant])
    _randomize_peepholes(module)
    lengths = [7, 3, 10, 1]
    batch = torch.randn(4, 10, 6) * 3.0  # padding positions hold junk, not zeros
    with torch.set_grad_enabled(grad):
        out, (h_n, c_n) = module(batch, lengths=torch.tensor(lengths))
        for b, length in enumerate(lengths):
            alone, (h_a, c_a) = module(batch[b : b + 1, :length])
            assert (out[b, :length] - alone[0]).abs().max() <= 1e-6
            assert (h_n[:, b] - h_a[:, 0]).abs().max() <= 1e-6
            assert (c_n[:, b] - c_a[:, 0]).abs().max() <= 1e-6
            assert torch.all(out[b, length:] == 0)


@pytest.mark.parametrize("options", [{}, {"peephole": True}, {"backward": "autograd"}], ids=["fused", "bptt", "ag"])
def test_empty_sequence_keeps_initial_state(options: dict[str, object]) -> None:
    torch.manual_seed(10)
    module = LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True, **options)  # type: ignore[arg-type]
    x = torch.randn(3, 5, 3)
    hx = (torch.randn(4, 3, 4), torch.randn(4, 3, 4))
    out, (h_n, c_n) = module(x, hx, lengths=torch.tensor([5, 0, 2]))
    assert torch.all(out[1] == 0)
    assert torch.equal(h_n[:, 1], hx[0][:, 1]) and torch.equal(c_n[:, 1], hx[1][:, 1])
    alone, (h_a, _) = module(x[2:, :2], (hx[0][:, 2:], hx[1][:, 2:]))
    assert (out[2, :2] - alone[0]).abs().max() <= 1e-6 and (h_n[:, 2] - h_a[:, 0]).abs().max() <= 1e-6


def test_lengths_validation() -> None:
    module = LSTM(2, 3, peephole=True)
    x = torch.randn(4, 2, 2)
    with pytest.raises(ValueError):
        module(x, lengths=[4, -1])
    with pytest.raises(ValueError):
        module(x, lengths=[5, 1])
    with pytest.raises(ValueError):
        module(x, lengths=[4])
    full, _ = module(x)
    assert torch.equal(module(x, lengths=[4, 4])[0], full)


# --------------------------------------------------------------------------------------------------------
# Initialisation, dropout, shapes
# --------------------------------------------------------------------------------------------------------


def test_initialisation() -> None:
    torch.manual_seed(7)
    module = LSTM(10, 16, num_layers=2, bidirectional=True, peephole=True)
    hidden = 16
    for name, param in module.named_parameters():
        if name.startswith("weight_hh"):
            for k in range(4):
                block = param[k * hidden : (k + 1) * hidden].detach().double()
                singular = torch.linalg.svdvals(block)
                torch.testing.assert_close(singular, torch.ones_like(singular), rtol=0, atol=1e-5)
        elif name.startswith("weight_ih"):
            bound = math.sqrt(6.0 / (hidden + param.shape[1]))
            assert param.abs().max() <= bound and param.std() > bound / 4
        elif name.startswith("bias_ih"):
            expected = torch.zeros(4 * hidden)
            expected[hidden : 2 * hidden] = 1.0
            assert torch.equal(param.detach(), expected)
        elif name.startswith("bias_hh") or name.startswith("weight_c"):
            assert torch.all(param == 0)
    with torch.no_grad():
        for param in module.parameters():
            param.fill_(3.0)
    module.reset_parameters()
    assert torch.all(module.bias_ih_l1_reverse[16:32] == 1.0) and torch.all(module.weight_co_l0 == 0)


@pytest.mark.parametrize("options", [{}, {"peephole": True}, {"coupled": True}], ids=["fused", "peep", "cifg"])
def test_dropout_only_between_layers_in_training(options: dict[str, bool]) -> None:
    torch.manual_seed(8)
    module = LSTM(4, 6, num_layers=2, dropout=0.5, **options)
    plain = LSTM(4, 6, num_layers=2, dropout=0.0, **options)
    plain.load_state_dict(module.state_dict())
    x = torch.randn(5, 3, 4)
    module.eval()
    out_eval = module(x)[0]
    assert torch.equal(out_eval, module(x)[0])
    assert (out_eval - plain(x)[0]).abs().max() <= 1e-6
    module.train()
    first, second = module(x)[0], module(x)[0]
    assert not torch.allclose(first, second) and not torch.allclose(first, out_eval)
    # Dropout never acts on the output of the last layer: one layer with dropout is deterministic.
    with pytest.warns(UserWarning):
        single = LSTM(4, 6, num_layers=1, dropout=0.5, **options)
    single.train()
    assert torch.equal(single(x)[0], single(x)[0])


def test_unbatched_input_and_repr() -> None:
    torch.manual_seed(9)
    module = LSTM(3, 4, num_layers=2, bidirectional=True, peephole=True, batch_first=True)
    _randomize_peepholes(module)
    x = torch.randn(5, 3)
    out, (h_n, c_n) = module(x)
    batched, (h_b, c_b) = module(x.unsqueeze(0))
    assert out.shape == (5, 8) and h_n.shape == (4, 4) and c_n.shape == (4, 4)
    torch.testing.assert_close(out, batched[0])
    torch.testing.assert_close(h_n, h_b[:, 0])
    torch.testing.assert_close(c_n, c_b[:, 0])
    assert module.batch_first
    assert "peephole=True" in repr(module)


# --------------------------------------------------------------------------------------------------------
# The inference loop (both directions in one time loop, parameters stacked once)
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["peephole", "coupled", "peephole+coupled"])
def test_inference_loop_is_used_and_follows_parameter_changes(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = lstm_module._loop_forward_directions
    monkeypatch.setattr(lstm_module, "_loop_forward_directions", lambda *a, **k: calls.append(1) or original(*a, **k))
    torch.manual_seed(9)
    module = LSTM(5, 6, num_layers=2, bidirectional=True, batch_first=True, **VARIANTS[variant])
    _randomize_peepholes(module)
    x, lengths = torch.randn(3, 7, 5), [7, 2, 5]
    with torch.no_grad():
        before = module(x, lengths=lengths)[0]
    assert len(calls) == 2  # one call per layer, both directions in it
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    module(x, lengths=lengths)[0].square().sum().backward()
    optimizer.step()  # parameters change in place: the stacked copies must be made again
    with torch.no_grad():
        after = module(x, lengths=lengths)[0]
    torch.testing.assert_close(after, module(x, lengths=lengths)[0].detach(), rtol=0, atol=1e-6)
    assert (after - before).abs().max() > 1e-3
    module.double()  # parameter data replaced (same Parameter objects, new memory and dtype)
    with torch.no_grad():
        doubled = module(x.double(), lengths=lengths)[0]
    assert doubled.dtype == torch.float64
    torch.testing.assert_close(doubled, module(x.double(), lengths=lengths)[0].detach(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", ["peephole", "coupled", "peephole+coupled"])
def test_lstm_layer_without_gradients_equals_its_training_forward(variant: str) -> None:
    torch.manual_seed(10)
    coupled = "coupled" in variant
    gates = 3 if coupled else 4
    x, h0, c0 = torch.randn(6, 3, 4, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64), torch.randn(
        3, 5, dtype=torch.float64)
    w_ih, w_hh = torch.randn(gates * 5, 4, dtype=torch.float64), torch.randn(gates * 5, 5, dtype=torch.float64)
    bias = torch.randn(gates * 5, dtype=torch.float64)
    peep = torch.randn(gates - 1, 5, dtype=torch.float64) if "peephole" in variant else None
    for last in (None, torch.tensor([5, 0, 3])):
        trained = lstm_layer(x, h0, c0, w_ih.requires_grad_(), w_hh, bias, peep, coupled, last)
        with torch.no_grad():
            inferred = lstm_layer(x, h0, c0, w_ih, w_hh, bias, peep, coupled, last)
        for got, want in zip(inferred, trained, strict=True):
            torch.testing.assert_close(got, want.detach(), rtol=0, atol=1e-12)
        w_ih = w_ih.detach()


@pytest.mark.parametrize("lengths", [None, [7, 3]], ids=["full", "padded"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_inference_results_are_ordinary_tensors(lengths: list[int] | None, bidirectional: bool) -> None:
    # The inference loop runs in torch.inference_mode; what leaves it must still work with autograd and
    # in-place operations, as a frozen encoder under a trained head needs.
    torch.manual_seed(11)
    module = LSTM(5, 6, bidirectional=bidirectional, peephole=True).requires_grad_(False)
    _randomize_peepholes(module)
    x = torch.randn(7, 2, 5)
    out, (h_n, c_n) = module(x, lengths=lengths)
    assert not any(t.is_inference() for t in (out, h_n, c_n))
    head = torch.randn(out.shape[-1], requires_grad=True)
    (out @ head).sum().backward()  # autograd saves ``out``
    torch.testing.assert_close(head.grad, out.sum(dim=(0, 1)))
    out.add_(1.0), h_n.add_(1.0), c_n.add_(1.0)
    hs, h_last, c_last = lstm_layer(x, torch.zeros(2, 6), torch.zeros(2, 6), torch.randn(24, 5), torch.randn(24, 6))
    assert not any(t.is_inference() for t in (hs, h_last, c_last))


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning",
                            "ignore::torch.jit.TracerWarning")  # tracing is the point here; its warnings are known
def test_inference_loop_traces_without_inference_mode() -> None:
    # Tracers and compilers (the ONNX exporters use them) get the loop without inference mode, and the trace
    # computes what the module does.
    torch.manual_seed(12)
    module = LSTM(5, 6, bidirectional=True, peephole=True).eval()
    _randomize_peepholes(module)
    x = torch.randn(7, 2, 5)
    seen = []

    def probe(y: torch.Tensor) -> torch.Tensor:
        with lstm_module._inference_mode():
            seen.append(torch.is_inference_mode_enabled())
        return module(y)[0]

    with torch.no_grad():
        probe(x)
        traced = torch.jit.trace(probe, (x,), check_trace=False)
        torch.testing.assert_close(traced(x), module(x)[0], rtol=0, atol=1e-6)
    assert seen == [True, False]


@pytest.mark.parametrize("variant", ["peephole", "coupled", "peephole+coupled"])
@pytest.mark.parametrize("given", [False, True], ids=["zero-state", "given-state"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_inference_with_and_without_initial_state(variant: str, given: bool, bias: bool) -> None:
    # Without hx the inference loop skips what a zero state would add at the first step; with one it adds it.
    # The bias rides in the input projection as one more input row (against a constant 1), or is absent.
    torch.manual_seed(13)
    fast, ref = _pair(VARIANTS[variant], input_size=4, hidden_size=5, num_layers=2, bidirectional=True, bias=bias)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    hx = (torch.randn(4, 3, 5, dtype=torch.float64), torch.randn(4, 3, 5, dtype=torch.float64)) if given else None
    for lengths in (None, [6, 2, 4]):
        with torch.no_grad():
            got, want = fast(x, hx, lengths=lengths), ref(x, hx, lengths=lengths)
        for g, w in zip(_flat(got), _flat(want), strict=True):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
