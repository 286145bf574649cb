"""An LSTM written from its gate equations, with peepholes and a coupled input/forget gate.

For every step t, with ``[h_{t-1}, x_t]`` the previous hidden state next to the input::

    f_t  = σ(W_f [h_{t-1}, x_t] + b_f)                       forget gate
    i_t  = σ(W_i [h_{t-1}, x_t] + b_i)                       input gate
    C~_t = tanh(W_C [h_{t-1}, x_t] + b_C)                    candidate cell ("g" in torch)
    C_t  = f_t * C_{t-1} + i_t * C~_t                        cell state
    o_t  = σ(W_o [h_{t-1}, x_t] + b_o)                       output gate
    h_t  = o_t * tanh(C_t)                                   hidden state / output

``W_* [h, x]`` is stored as torch stores it: ``weight_ih_l{k}`` (4H, E) and ``weight_hh_l{k}`` (4H, H), the
four gate blocks stacked in rows in the order **i, f, g (= C~), o**, plus two biases ``bias_ih_l{k}`` and
``bias_hh_l{k}`` (4H,) that are simply added. Options on top of these equations:

* **Peepholes** (Gers & Schmidhuber 2000; used by the LSTM-DSSM of Palangi et al. 2016): the gates also see
  the cell through diagonal weights, the input and forget gates the previous cell, the output gate the new
  one::

      i_t = σ(... + w_ci * C_{t-1}),   f_t = σ(... + w_cf * C_{t-1}),   o_t = σ(... + w_co * C_t)

  stored as ``weight_ci_l{k}``, ``weight_cf_l{k}``, ``weight_co_l{k}`` of shape (H,).
* **Coupled input and forget gates** (CIFG): ``i_t = 1 - f_t``. The i rows of the weights and biases and
  ``weight_ci`` are then unused (their gradients are zero), but they are kept so that the parameter shapes
  and names stay those of ``torch.nn.LSTM`` and weights copy across either way.
* Several layers, both directions, dropout between layers (not after the last one, as torch), and
  right-padded batches of variable length (``lengths``): each sequence's final state is the state at its own
  last real token, the reverse direction starts at that token, and outputs at padded positions are zero, so a
  sequence in a padded batch gives exactly what it gives alone.

Three implementations compute the same thing:

* without peepholes or coupling, the module runs ``torch.nn.LSTM``'s fused kernel (oneDNN on CPU, cuDNN on
  GPU) with its own parameters (``torch._VF.lstm``; variable lengths go through ``pack_padded_sequence``);
* otherwise a custom :class:`torch.autograd.Function` (:func:`lstm_layer`) runs the time loop with fused
  in-place gate arithmetic and a hand-written backward through time (see its docstring for the derivation);
* ``LSTM(..., backward="autograd")`` runs :func:`lstm_layer_reference`, a plain loop over :func:`lstm_cell`
  differentiated by autograd: slow, obviously right, used by the tests to check the other two.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

__all__ = ["LSTM", "CellOutput", "lstm_cell", "lstm_layer", "lstm_layer_reference"]

Backward = Literal["bptt", "autograd"]

# ``grad * s * (1 - s)`` and ``grad * (1 - t * t)`` in one kernel each, with an ``out=`` form.
_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input
_tanh_backward = torch.ops.aten.tanh_backward.grad_input

# The gate buffers of the time loop are allocated in chunks of time steps of at most this many bytes. glibc
# serves allocations of 32 MiB and more with a fresh mmap each time, whose page faults cost here as much as
# the matmul that fills the buffer (a (32*256, 1024) float32 projection: 8 ms of matmul, 9 ms of faults);
# smaller blocks are recycled from the heap.
_CHUNK_BYTES = 8 << 20


# ----------------------------------------------------------------------------------------------------------
# Reference implementation: one step at a time, differentiated by autograd.
# ----------------------------------------------------------------------------------------------------------


class CellOutput(NamedTuple):
    """New state and the four gate activations of one LSTM step (all (B, H))."""

    h: Tensor
    c: Tensor
    i: Tensor
    f: Tensor
    g: Tensor
    o: Tensor


def lstm_cell(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    w_ci: Tensor | None = None,
    w_cf: Tensor | None = None,
    w_co: Tensor | None = None,
    coupled: bool = False,
) -> CellOutput:
    """One LSTM step, written as the equations of the module docstring.

    ``x`` (B, E), ``h`` and ``c`` (B, H); weights in torch's layout (rows i, f, g, o). The peephole weights
    ``w_ci``, ``w_cf``, ``w_co`` (H,) are all given or all None; with ``coupled`` the input gate is
    ``1 - f`` and the i rows of the weights (and ``w_ci``) are ignored.
    """
    pre = x @ w_ih.t() + h @ w_hh.t()
    if b_ih is not None:
        pre = pre + b_ih
    if b_hh is not None:
        pre = pre + b_hh
    pre_i, pre_f, pre_g, pre_o = pre.chunk(4, dim=1)
    if w_cf is not None:  # peepholes: input and forget gates look at the previous cell
        pre_f = pre_f + w_cf * c
        if w_ci is not None:
            pre_i = pre_i + w_ci * c
    f = torch.sigmoid(pre_f)
    i = 1.0 - f if coupled else torch.sigmoid(pre_i)
    g = torch.tanh(pre_g)  # the candidate cell C~_t
    c_new = f * c + i * g
    if w_co is not None:  # peephole: the output gate looks at the new cell
        pre_o = pre_o + w_co * c_new
    o = torch.sigmoid(pre_o)
    h_new = o * torch.tanh(c_new)
    return CellOutput(h_new, c_new, i, f, g, o)


def lstm_layer_reference(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    peepholes: tuple[Tensor, Tensor, Tensor] | None = None,
    coupled: bool = False,
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """One layer, one direction, looping over :func:`lstm_cell`; autograd does the backward.

    ``x`` (T, B, E), ``h0``/``c0`` (B, H), ``peepholes`` = (w_ci, w_cf, w_co). With ``lengths`` (B,) the
    state of a sequence is frozen outside ``t < lengths[b]`` (after its end going forwards, before its end
    going backwards, so the reverse direction starts at the sequence's own last token) and its output there
    is zero. Returns ``(output (T, B, H), h_n, c_n)``.
    """
    w_ci, w_cf, w_co = peepholes if peepholes is not None else (None, None, None)
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    h, c = h0, c0
    outputs: list[Tensor] = [x.new_zeros(())] * x.shape[0]
    for t in steps:
        cell = lstm_cell(x[t], h, c, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co, coupled)
        if lengths is None:
            h, c = cell.h, cell.c
            outputs[t] = h
        else:
            real = (lengths > t).unsqueeze(1)
            h = torch.where(real, cell.h, h)
            c = torch.where(real, cell.c, c)
            outputs[t] = torch.where(real, cell.h, torch.zeros_like(cell.h))
    return torch.stack(outputs), h, c


# ----------------------------------------------------------------------------------------------------------
# Fast implementation: fused in-place forward loop and hand-written backward through time.
# ----------------------------------------------------------------------------------------------------------


def _time_chunks(steps: int, bytes_per_step: int) -> list[tuple[int, int]]:
    """Split ``range(steps)`` into consecutive ``(start, end)`` blocks of at most ``_CHUNK_BYTES``."""
    size = max(1, _CHUNK_BYTES // max(1, bytes_per_step))
    return [(s, min(s + size, steps)) for s in range(0, steps, size)]


def _loop_forward(
    x: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    bias: Tensor | None,
    peep: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    coupled: bool,
    store: bool,
) -> tuple[Tensor, Tensor, list[Tensor], Tensor | None]:
    """Run the gate equations over all steps; shapes and layout as in :func:`lstm_layer`.

    Returns ``hs`` and ``cs`` of shape (T + 1, B, H) whose slot 0 is the initial state, the activated gates
    (chunks of (n, B, G)) and, when ``store``, ``tanh(C_t)`` (T, B, H) for the backward.
    """
    steps, batch, n_in = x.shape
    hidden = w_hh.shape[1]
    gsize = w_hh.shape[0]
    hs = x.new_empty(steps + 1, batch, hidden)
    cs = x.new_empty(steps + 1, batch, hidden)
    hs[0].copy_(h0)
    cs[0].copy_(c0)
    tcs = x.new_empty(steps, batch, hidden) if store else None
    w_ih_t = w_ih.t()
    w_hh_t = w_hh.t().contiguous()  # (H, G): measured 15% faster per step than the transposed view
    h, c = hs[0], cs[0]
    chunks: list[Tensor] = []
    for start, end in _time_chunks(steps, batch * gsize * x.element_size()):
        # Input projection (and bias) of the whole chunk in one matmul, outside the recurrence.
        xs = x[start:end].reshape(-1, n_in)
        pre = torch.addmm(bias, xs, w_ih_t) if bias is not None else torch.mm(xs, w_ih_t)
        pre = pre.view(end - start, batch, gsize)
        chunks.append(pre)
        for t, a in enumerate(pre.unbind(0), start):
            a.addmm_(h, w_hh_t)  # a = W [h_{t-1}, x_t] + b, all gates, in place
            tc_out = tcs[t] if tcs is not None else None
            if coupled:  # gates f, g, o (the i rows are not computed at all)
                f, g, o = a[:, :hidden], a[:, hidden : 2 * hidden], a[:, 2 * hidden :]
                if peep is not None:
                    f.addcmul_(c, peep[0])  # f_t = σ(... + w_cf * C_{t-1})
                    f.sigmoid_()
                else:
                    a.view(batch, 3, hidden)[:, ::2].sigmoid_()  # f and o at once
                g.tanh_()  # C~_t
                c = torch.addcmul(g, f, c - g, out=cs[t + 1])  # C_t = f C_{t-1} + (1 - f) C~_t
                if peep is not None:
                    o.addcmul_(c, peep[1]).sigmoid_()  # o_t = σ(... + w_co * C_t)
            else:  # gates i, f, g, o
                i_f = a[:, : 2 * hidden]
                if peep is not None:  # [i, f] += [w_ci, w_cf] * C_{t-1}
                    i_f.view(batch, 2, hidden).addcmul_(c.unsqueeze(1), peep[:2])
                i_f.sigmoid_()
                i, f = a[:, :hidden], a[:, hidden : 2 * hidden]
                g, o = a[:, 2 * hidden : 3 * hidden].tanh_(), a[:, 3 * hidden :]
                c = torch.mul(f, c, out=cs[t + 1]).addcmul_(i, g)  # C_t = f C_{t-1} + i C~_t
                if peep is not None:
                    o.addcmul_(c, peep[2])  # o_t = σ(... + w_co * C_t)
                o.sigmoid_()
            tc = torch.tanh(c, out=tc_out) if tc_out is not None else torch.tanh(c)
            h = torch.mul(o, tc, out=hs[t + 1])  # h_t = o_t tanh(C_t)
    return hs, cs, chunks, tcs


class _LSTMLayerFunction(torch.autograd.Function):
    """One layer, one direction; see :func:`lstm_layer` for the backward derivation."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        w_ih: Tensor,
        w_hh: Tensor,
        bias: Tensor | None,
        peep: Tensor | None,
        h0: Tensor,
        c0: Tensor,
        coupled: bool,
    ) -> tuple[Tensor, Tensor]:
        hs, cs, chunks, tcs = _loop_forward(x, w_ih, w_hh, bias, peep, h0, c0, coupled, store=True)
        ctx.coupled = coupled
        ctx.n_chunks = len(chunks)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, w_ih, w_hh, bias, peep, hs, cs, tcs, *chunks)
        return hs[1:], cs[1:]

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_hs: Tensor | None, grad_cs: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        x, w_ih, w_hh, bias, peep, hs, cs, tcs, *chunks = ctx.saved_tensors
        coupled: bool = ctx.coupled
        steps, batch, n_in = x.shape
        hidden = w_hh.shape[1]
        gsize = w_hh.shape[0]
        need_x, need_wih, need_whh, need_b, need_p, need_h0, need_c0, _ = ctx.needs_input_grad

        # Walk the chunks and steps backwards; dA (pre-activation gate gradients) fills per-chunk buffers.
        spans = _time_chunks(steps, batch * gsize * x.element_size())
        d_chunks: list[Tensor] = [x.new_empty(0)] * len(spans)
        da_next: Tensor | None = None  # δa_{t+1}, feeds δh_t through W_hh
        dc_carry: Tensor | None = None  # ∂L/∂C_t through step t+1
        for k in range(len(spans) - 1, -1, -1):
            start, end = spans[k]
            dchunk = x.new_empty(end - start, batch, gsize)
            d_chunks[k] = dchunk
            gates = chunks[k]
            for t in range(end - 1, start - 1, -1):
                a, da = gates[t - start], dchunk[t - start]
                c_prev, tc = cs[t], tcs[t]
                # δh_t = ∂ℓ/∂h_t + δa_{t+1} W_hh
                if da_next is None:
                    dh = grad_hs[t] if grad_hs is not None else x.new_zeros(batch, hidden)
                elif grad_hs is not None:
                    dh = torch.addmm(grad_hs[t], da_next, w_hh)
                else:
                    dh = torch.mm(da_next, w_hh)
                o = a[:, gsize - hidden :]
                da_o = da[:, gsize - hidden :]
                _sigmoid_backward(torch.mul(dh, tc, out=da_o), o, grad_input=da_o)  # δâ^o = δh tanh(C) σ'
                dc = dh * o
                _tanh_backward(dc, tc, grad_input=dc)  # δC_t = δh o (1 - tanh²C) + ...
                if dc_carry is not None:
                    dc += dc_carry
                if grad_cs is not None:
                    dc += grad_cs[t]
                if peep is not None:
                    dc.addcmul_(da_o, peep[-1])  # ... + δâ^o w_co
                if coupled:  # C_t = f C_{t-1} + (1 - f) C~
                    f, g = a[:, :hidden], a[:, hidden : 2 * hidden]
                    da_f, da_g = da[:, :hidden], da[:, hidden : 2 * hidden]
                    _sigmoid_backward(torch.mul(dc, c_prev - g, out=da_f), f, grad_input=da_f)
                    _tanh_backward(torch.mul(dc, 1.0 - f, out=da_g), g, grad_input=da_g)
                    dc_carry = dc.mul_(f)
                    if peep is not None:
                        dc_carry.addcmul_(da_f, peep[0])
                else:
                    i, f, g = a[:, :hidden], a[:, hidden : 2 * hidden], a[:, 2 * hidden : 3 * hidden]
                    torch.mul(dc, g, out=da[:, :hidden])  # δi = δC C~
                    torch.mul(dc, c_prev, out=da[:, hidden : 2 * hidden])  # δf = δC C_{t-1}
                    da_if = da[:, : 2 * hidden]
                    _sigmoid_backward(da_if, a[:, : 2 * hidden], grad_input=da_if)
                    da_g = da[:, 2 * hidden : 3 * hidden]
                    _tanh_backward(torch.mul(dc, i, out=da_g), g, grad_input=da_g)  # δC~ = δC i
                    dc_carry = dc.mul_(f)  # ∂L/∂C_{t-1} = δC f + δâ^i w_ci + δâ^f w_cf
                    if peep is not None:
                        dc_carry.addcmul_(da[:, :hidden], peep[0]).addcmul_(
                            da[:, hidden : 2 * hidden], peep[1]
                        )
                da_next = da

        # Everything that does not feed the recurrence: a few big matmuls over whole chunks.
        grad_x = x.new_empty(x.shape) if need_x else None
        grad_wih = torch.zeros_like(w_ih) if need_wih else None
        grad_whh = torch.zeros_like(w_hh) if need_whh else None
        grad_b = torch.zeros_like(bias) if need_b and bias is not None else None
        grad_p = torch.zeros_like(peep) if need_p and peep is not None else None
        for (start, end), dchunk in zip(spans, d_chunks, strict=True):
            dflat = dchunk.view(-1, gsize)
            if grad_x is not None:
                torch.mm(dflat, w_ih, out=grad_x[start:end].view(-1, n_in))
            if grad_wih is not None:
                grad_wih.addmm_(dflat.t(), x[start:end].reshape(-1, n_in))
            if grad_whh is not None:  # Σ_t δa_t^T h_{t-1}; hs[t] is h_{t-1}
                grad_whh.addmm_(dflat.t(), hs[start:end].view(-1, hidden))
            if grad_b is not None:
                grad_b += dflat.sum(0)
            if grad_p is not None:
                c_prev, c_new = cs[start:end], cs[start + 1 : end + 1]
                if coupled:  # [w_cf, w_co]
                    grad_p[0] += (dchunk[..., :hidden] * c_prev).sum((0, 1))
                else:  # [w_ci, w_cf, w_co]
                    grad_p[:2] += (
                        dchunk[..., : 2 * hidden].unflatten(-1, (2, hidden)) * c_prev.unsqueeze(2)
                    ).sum((0, 1))
                grad_p[-1] += (dchunk[..., gsize - hidden :] * c_new).sum((0, 1))
        grad_h0 = torch.mm(d_chunks[0][0], w_hh) if need_h0 else None
        grad_c0 = dc_carry if need_c0 else None
        return grad_x, grad_wih, grad_whh, grad_b, grad_p, grad_h0, grad_c0, None


def lstm_layer(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    bias: Tensor | None = None,
    peep: Tensor | None = None,
    coupled: bool = False,
) -> tuple[Tensor, Tensor]:
    """One layer, one direction over the whole sequence, with a hand-written backward through time.

    Shapes: ``x`` (T, B, E); ``h0``, ``c0`` (B, H). For the standard cell ``w_ih`` (4H, E), ``w_hh`` (4H, H)
    and ``bias`` (4H,) (= b_ih + b_hh) hold the gates i, f, g, o in rows, and ``peep`` = [w_ci, w_cf, w_co]
    (3, H). For the coupled cell (``i = 1 - f``) they hold only f, g, o: (3H, E), (3H, H), (3H,), and
    ``peep`` = [w_cf, w_co] (2, H). ``peep`` None means no peepholes. Returns all hidden states and all cell
    states, each (T, B, H): every step is computed, padding included; pick the final states out with
    ``lengths`` afterwards (steps after a sequence's end never influence the steps before it).

    The forward computes the input projection of a block of steps in one matmul, then per step one
    ``addmm`` for ``W_hh h_{t-1}`` and the gate arithmetic in place (one sigmoid over i and f together).

    Backward through time. Write ``a_t = W_ih x_t + b + W_hh h_{t-1}`` (rows a^i, a^f, a^g, a^o) and
    ``â`` for a gate's full pre-activation (with its peephole term), so that ``i = σ(â^i)``,
    ``f = σ(â^f)``, ``C~ = tanh(a^g)``, ``o = σ(â^o)``; ``δv`` is ∂L/∂v and ``σ'(s) = s (1 - s)`` in terms
    of the gate's value s. Going from t = T down to 1, with ``ε_{T+1} = 0``, ``δa_{T+1} = 0``::

        δh_t   = ∂ℓ/∂h_t + δa_{t+1} W_hh                     (output gradient + path through step t+1)
        δo_t   = δh_t tanh(C_t)                              δâ^o_t = δo_t σ'(o_t)
        δC_t   = δh_t o_t (1 - tanh²(C_t)) + δâ^o_t w_co + ε_{t+1} (+ ∂ℓ/∂C_t if C is an output)
        δi_t   = δC_t C~_t                                   δâ^i_t = δi_t σ'(i_t)
        δf_t   = δC_t C_{t-1}                                δâ^f_t = δf_t σ'(f_t)
        δC~_t  = δC_t i_t                                    δa^g_t = δC~_t (1 - C~_t²)
        ε_t    = δC_t f_t + δâ^i_t w_ci + δâ^f_t w_cf        (= ∂L/∂C_{t-1} through step t)

    ``ε_{t+1}`` is how C_t reaches the loss through the next step: directly through ``f_{t+1} C_t`` and,
    with peepholes, through the pre-activations of i_{t+1} and f_{t+1}. Because ``δa_t = δâ_t`` (the
    peephole adds to the pre-activation), the parameter gradients are sums over steps, done after the loop
    with one matmul per block of steps over the stacked gradients rather than one per step::

        ∂L/∂W_hh = Σ_t δa_t^T h_{t-1}     ∂L/∂W_ih = Σ_t δa_t^T x_t     ∂L/∂b = Σ_t δa_t
        ∂L/∂x_t  = δa_t W_ih              ∂L/∂h_0 = δa_1 W_hh           ∂L/∂C_0 = ε_1
        ∂L/∂w_ci = Σ δâ^i_t C_{t-1}       ∂L/∂w_cf = Σ δâ^f_t C_{t-1}   ∂L/∂w_co = Σ δâ^o_t C_t

    (sums over steps and the batch). Coupled cell: ``C_t = f_t C_{t-1} + (1 - f_t) C~_t``, so
    ``δf_t = δC_t (C_{t-1} - C~_t)``, ``δC~_t = δC_t (1 - f_t)``, ``ε_t = δC_t f_t + δâ^f_t w_cf``, and
    there is no input gate. Checked against autograd by ``torch.autograd.gradcheck`` in the tests.
    """
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, w_ih, w_hh, bias, peep, h0, c0)
    ):
        hs, cs = _LSTMLayerFunction.apply(x, w_ih, w_hh, bias, peep, h0, c0, coupled)
        return hs, cs
    with torch.no_grad():
        hs, cs, _, _ = _loop_forward(x, w_ih, w_hh, bias, peep, h0, c0, coupled, store=False)
    return hs[1:], cs[1:]


# ----------------------------------------------------------------------------------------------------------
# The module.
# ----------------------------------------------------------------------------------------------------------


class _Lengths(NamedTuple):
    """What the layers need to know about a right-padded batch."""

    lengths: Tensor  # (B,) int64 on the input's device
    lengths_cpu: Tensor  # the same on the CPU, for pack_padded_sequence
    mask: Tensor  # (T, B, 1), 1.0 at real tokens, in the input's dtype
    last: Tensor  # (1, B, 1) index of each sequence's last real token
    reverse_index: Tensor  # (T * B,) flat (t, b) -> (len_b - 1 - t, b) inside each sequence, identity after


def _prepare_lengths(
    lengths: Tensor | Sequence[int], steps: int, batch: int, like: Tensor
) -> _Lengths | None:
    lengths_cpu = torch.as_tensor(lengths, dtype=torch.int64, device="cpu").reshape(-1)
    if lengths_cpu.numel() != batch:
        raise ValueError(f"lengths has {lengths_cpu.numel()} entries for a batch of {batch}")
    if batch and (int(lengths_cpu.min()) < 1 or int(lengths_cpu.max()) > steps):
        raise ValueError(f"lengths must lie in [1, {steps}], got {lengths_cpu.tolist()}")
    if bool((lengths_cpu == steps).all()):
        return None  # nothing padded
    lengths_dev = lengths_cpu.to(like.device)
    t = torch.arange(steps, device=like.device).unsqueeze(1)  # (T, 1)
    real = t < lengths_dev  # (T, B)
    source_t = torch.where(real, lengths_dev - 1 - t, t)
    reverse_index = (source_t * batch + torch.arange(batch, device=like.device)).reshape(-1)
    return _Lengths(
        lengths_dev,
        lengths_cpu,
        real.unsqueeze(2).to(like.dtype),
        (lengths_dev - 1).view(1, -1, 1),
        reverse_index,
    )


class LSTM(nn.Module):
    """Drop-in for ``torch.nn.LSTM`` written from the gate equations, with peepholes and CIFG options.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional: as torch.nn.LSTM.
        peephole: diagonal peephole connections (``weight_ci``, ``weight_cf``, ``weight_co`` per layer and
            direction, shape (hidden_size,)).
        coupled: coupled input and forget gates, ``i_t = 1 - f_t``; the i rows of the weights and biases
            (and ``weight_ci``) are kept for torch-compatible shapes but unused.
        backward: ``"bptt"`` (default) runs torch's fused kernel when neither option is on and the
            hand-written backward-through-time otherwise; ``"autograd"`` runs the step-by-step reference
            for every variant (slow; for checking).

    ``forward(x, hx=None, lengths=None)`` returns ``output, (h_n, c_n)`` with torch's shapes. ``lengths``
    are the real lengths of a right-padded batch: final states are taken at each sequence's last real
    token, the reverse direction starts there, and the output is zero at padded positions.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        peephole: bool = False,
        coupled: bool = False,
        *,
        backward: Backward = "bptt",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not (0.0 <= dropout <= 1.0):
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        if backward not in ("bptt", "autograd"):
            raise ValueError(f"backward must be 'bptt' or 'autograd', got {backward!r}")
        if hidden_size < 1 or num_layers < 1:
            raise ValueError("hidden_size and num_layers must be positive")
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout acts between layers only: with num_layers=1 it does nothing",
                UserWarning,
                stacklevel=2,
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.peephole = peephole
        self.coupled = coupled
        self.backward = backward
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        gates = 4 * hidden_size
        self._flat_names: list[str] = []
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else hidden_size * self.num_directions
            for suffix in self._suffixes():
                params = {
                    f"weight_ih_l{layer}{suffix}": (gates, layer_in),
                    f"weight_hh_l{layer}{suffix}": (gates, hidden_size),
                }
                if bias:
                    params[f"bias_ih_l{layer}{suffix}"] = (gates,)
                    params[f"bias_hh_l{layer}{suffix}"] = (gates,)
                for name, shape in params.items():
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
                    self._flat_names.append(name)
                if peephole:
                    for gate in ("ci", "cf", "co"):
                        self.register_parameter(
                            f"weight_{gate}_l{layer}{suffix}",
                            nn.Parameter(torch.empty(hidden_size, **factory)),
                        )
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        for name, default in (
            ("bias", True),
            ("batch_first", False),
            ("dropout", 0.0),
            ("bidirectional", False),
        ):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        if self.peephole:
            s += ", peephole=True"
        if self.coupled:
            s += ", coupled=True"
        if self.backward != "bptt":
            s += f", backward={self.backward!r}"
        return s

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Orthogonal recurrent gate blocks, Xavier-uniform input gate blocks, forget bias 1, the rest 0.

        Every gate's (H, H) block of ``weight_hh`` is an orthogonal matrix and every gate's (H, E) block of
        ``weight_ih`` is drawn from U(-a, a) with ``a = sqrt(6 / (H + E))``. Biases are zero except the
        forget block of ``bias_ih`` (so ``b_ih + b_hh`` has forget bias 1); peephole weights are zero.
        """
        hidden = self.hidden_size
        for layer in range(self.num_layers):
            for suffix in self._suffixes():
                w_ih: Tensor = getattr(self, f"weight_ih_l{layer}{suffix}")
                w_hh: Tensor = getattr(self, f"weight_hh_l{layer}{suffix}")
                bound = math.sqrt(6.0 / (hidden + w_ih.shape[1]))
                for k in range(4):
                    w_ih[k * hidden : (k + 1) * hidden].uniform_(-bound, bound)
                    nn.init.orthogonal_(w_hh[k * hidden : (k + 1) * hidden])
                if self.bias:
                    getattr(self, f"bias_hh_l{layer}{suffix}").zero_()
                    b_ih = getattr(self, f"bias_ih_l{layer}{suffix}")
                    b_ih.zero_()
                    b_ih[hidden : 2 * hidden] = 1.0
                if self.peephole:
                    for gate in ("ci", "cf", "co"):
                        getattr(self, f"weight_{gate}_l{layer}{suffix}").zero_()

    def flatten_parameters(self) -> None:
        """No-op, for code written against torch.nn.LSTM (parameters are used as they are)."""

    # -- forward --------------------------------------------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        hx: tuple[Tensor, Tensor] | None = None,
        lengths: Tensor | Sequence[int] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``x`` (T, B, E) or (B, T, E) with ``batch_first`` (or unbatched (T, E)); ``hx`` = (h_0, c_0) each
        (num_layers * D, B, H); ``lengths`` (B,) real lengths of a right-padded batch.

        Returns ``output`` (T, B, D * H) (batch-first if asked) and ``(h_n, c_n)``, each
        (num_layers * D, B, H), layer-major with the forward direction first, as torch.nn.LSTM.
        """
        if x.dim() == 2:  # unbatched, as torch accepts it
            if lengths is not None:
                raise ValueError("lengths needs a batched input")
            hx1 = None if hx is None else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            batched_first, self.batch_first = self.batch_first, False
            try:
                out, (h_n, c_n) = self.forward(x.unsqueeze(1), hx1)
            finally:
                self.batch_first = batched_first
            return out.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if x.dim() != 3:
            raise ValueError(f"LSTM expects a 2-D or 3-D input, got shape {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input has {x.shape[-1]} features, expected {self.input_size}")
        steps, batch = (x.shape[1], x.shape[0]) if self.batch_first else (x.shape[0], x.shape[1])
        states = self.num_layers * self.num_directions
        if hx is None:
            zeros = x.new_zeros(states, batch, self.hidden_size)
            hx = (zeros, zeros)
        else:
            expected = (states, batch, self.hidden_size)
            if tuple(hx[0].shape) != expected or tuple(hx[1].shape) != expected:
                raise ValueError(f"hx tensors must have shape {expected}")
        pad = _prepare_lengths(lengths, steps, batch, x) if lengths is not None else None

        if self.backward == "bptt" and not (self.peephole or self.coupled):
            return self._forward_fused(x, hx, pad)
        seq = x.transpose(0, 1) if self.batch_first else x
        out, h_n, c_n = self._forward_loop(seq.contiguous(), hx, pad)
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, (h_n, c_n)

    def _forward_fused(
        self, x: Tensor, hx: tuple[Tensor, Tensor], pad: _Lengths | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """torch.nn.LSTM's own kernel on this module's parameters (gate order and names are torch's)."""
        weights = [getattr(self, name) for name in self._flat_names]
        dropout, train = self.dropout, self.training
        if pad is None:
            out, h_n, c_n = torch._VF.lstm(
                x,
                hx,
                weights,
                self.bias,
                self.num_layers,
                dropout,
                train,
                self.bidirectional,
                self.batch_first,
            )
            return out, (h_n, c_n)
        packed = pack_padded_sequence(x, pad.lengths_cpu, batch_first=self.batch_first, enforce_sorted=False)
        order, unorder = packed.sorted_indices, packed.unsorted_indices
        assert order is not None and unorder is not None
        hx_sorted = (hx[0].index_select(1, order), hx[1].index_select(1, order))
        data, h_n, c_n = torch._VF.lstm(
            packed.data,
            packed.batch_sizes,
            hx_sorted,
            weights,
            self.bias,
            self.num_layers,
            dropout,
            train,
            self.bidirectional,
        )
        out, _ = pad_packed_sequence(
            PackedSequence(data, packed.batch_sizes, order, unorder),
            batch_first=self.batch_first,
            total_length=x.shape[1] if self.batch_first else x.shape[0],
        )
        return out, (h_n.index_select(1, unorder), c_n.index_select(1, unorder))

    def _direction_params(self, layer: int, suffix: str) -> dict[str, Tensor | None]:
        def get(name: str) -> Tensor | None:
            return getattr(self, f"{name}_l{layer}{suffix}", None)

        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ci", "weight_cf", "weight_co")
        return {name: get(name) for name in names}

    def _forward_loop(
        self, x: Tensor, hx: tuple[Tensor, Tensor], pad: _Lengths | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """All layers and directions, time-major ``x`` (T, B, E)."""
        h_finals: list[Tensor] = []
        c_finals: list[Tensor] = []
        layer_in = x
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                layer_in = F.dropout(layer_in, self.dropout, training=True)
            outs: list[Tensor] = []
            for direction, suffix in enumerate(self._suffixes()):
                index = layer * self.num_directions + direction
                p = self._direction_params(layer, suffix)
                h0, c0 = hx[0][index], hx[1][index]
                reverse = direction == 1
                if self.backward == "autograd":
                    peeps = (p["weight_ci"], p["weight_cf"], p["weight_co"]) if self.peephole else None
                    out, h_n, c_n = lstm_layer_reference(
                        layer_in,
                        h0,
                        c0,
                        p["weight_ih"],  # type: ignore[arg-type]
                        p["weight_hh"],  # type: ignore[arg-type]
                        p["bias_ih"],
                        p["bias_hh"],
                        peeps,  # type: ignore[arg-type]
                        self.coupled,
                        None if pad is None else pad.lengths,
                        reverse,
                    )
                else:
                    out, h_n, c_n = self._run_bptt(layer_in, h0, c0, p, pad, reverse)
                outs.append(out)
                h_finals.append(h_n)
                c_finals.append(c_n)
            layer_in = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        if pad is not None and self.backward != "autograd":
            layer_in = layer_in * pad.mask
        return layer_in, torch.stack(h_finals), torch.stack(c_finals)

    def _run_bptt(
        self,
        x: Tensor,
        h0: Tensor,
        c0: Tensor,
        p: dict[str, Tensor | None],
        pad: _Lengths | None,
        reverse: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One direction of one layer through :func:`lstm_layer`: reversal, gate slicing, final states."""
        hidden = self.hidden_size
        w_ih, w_hh = p["weight_ih"], p["weight_hh"]
        assert w_ih is not None and w_hh is not None
        bias = None
        if p["bias_ih"] is not None and p["bias_hh"] is not None:
            bias = p["bias_ih"] + p["bias_hh"]
        peep = None
        if self.coupled:  # only the f, g, o rows take part
            w_ih, w_hh = w_ih[hidden:], w_hh[hidden:]
            bias = bias[hidden:] if bias is not None else None
            if self.peephole:
                peep = torch.stack([p["weight_cf"], p["weight_co"]])  # type: ignore[list-item]
        elif self.peephole:
            peep = torch.stack([p["weight_ci"], p["weight_cf"], p["weight_co"]])  # type: ignore[list-item]
        batch, n_in = x.shape[1], x.shape[2]
        if reverse:  # run the reversed sequence forwards; each sequence reversed within its own length
            x = (
                x.flip(0)
                if pad is None
                else x.reshape(-1, n_in).index_select(0, pad.reverse_index).view_as(x)
            )
        hs, cs = lstm_layer(x, h0, c0, w_ih, w_hh, bias, peep, self.coupled)
        if pad is None:
            h_n, c_n = hs[-1], cs[-1]
        else:
            last = pad.last.expand(1, batch, hidden)
            h_n, c_n = hs.gather(0, last).squeeze(0), cs.gather(0, last).squeeze(0)
        if reverse:
            hs = (
                hs.flip(0)
                if pad is None
                else hs.reshape(-1, hidden).index_select(0, pad.reverse_index).view_as(hs)
            )
        return hs, h_n, c_n
