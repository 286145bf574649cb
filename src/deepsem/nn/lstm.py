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

import contextlib
import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
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
# Without a backward to feed, one block buffer is reused for all blocks (a fresh one a block cost page faults);
# smaller, so that it stays in cache (2-4 MiB measured best at batch 256; 8 and 16 MiB slower).
_INFERENCE_CHUNK_BYTES = 4 << 20


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
    inputs = x.unbind(0)  # one gradient concatenation in the backward, not a zero-filled x per step
    for t in steps:
        cell = lstm_cell(inputs[t], h, c, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co, coupled)
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


def _time_chunks(steps: int, bytes_per_step: int, budget: int) -> list[tuple[int, int]]:
    """Split ``range(steps)`` into consecutive ``(start, end)`` blocks of at most ``budget`` bytes."""
    size = max(1, budget // max(1, bytes_per_step))
    return [(s, min(s + size, steps)) for s in range(0, steps, size)]


class _Forward(NamedTuple):
    hs: Tensor  # (T, B, H) h_1 .. h_T
    cs: Tensor  # (T, B, H) C_1 .. C_T
    c_last: Tensor  # (B, H), C_T
    gates: list[Tensor]  # blocks (n, B, G) of steps: gate values [i,] f, o (and a^g)
    spans: list[tuple[int, int]]  # the (start, end) steps of each block
    tanh_cs: Tensor  # (T, B, H) tanh(C_t)
    cands: Tensor  # (T, B, H) the candidates C~_t (the gate blocks keep a^g)


def _tanh_of_block(block: Tensor, out: Tensor) -> Tensor:
    """``tanh`` of a column block of the gate buffer into the contiguous ``out``.

    ATen's tanh on a view that skips columns (row stride 4H) was measured 3-4x slower with 2 threads than
    a copy to contiguous memory followed by tanh there; so copy first.
    """
    return out.copy_(block).tanh_()


def _loop_forward(
    x: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    bias: Tensor | None,
    peep: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    coupled: bool,
) -> _Forward:
    """Run the gate equations over all steps, keeping everything the backward needs: the gates (one buffer
    per block of steps), all cell states and their tanh; shapes and layout as in :func:`lstm_layer`.
    (Without a backward to feed, :func:`_loop_forward_directions` runs instead.)
    """
    steps, batch, n_in = x.shape
    hidden = w_hh.shape[1]
    gsize = w_hh.shape[0]
    hs = x.new_empty(steps, batch, hidden)
    cs = x.new_empty(steps, batch, hidden)
    tcs = x.new_empty(steps, batch, hidden)
    gs = x.new_empty(steps, batch, hidden)
    w_ih_t = w_ih.t()
    w_hh_t = w_hh.t().contiguous()  # (H, G): measured 15% faster per step than the transposed view
    h, c = h0, c0
    step_bytes = batch * gsize * x.element_size()
    spans = _time_chunks(steps, step_bytes, _CHUNK_BYTES)
    gates: list[Tensor] = []
    # Per-step views are made once (one unbind instead of a dozen slicing calls a step).
    h_steps, g_steps, tc_steps, c_steps = hs.unbind(0), gs.unbind(0), tcs.unbind(0), cs.unbind(0)
    n_sig = 1 if coupled else 2  # sigmoid gates before the candidate: [i, f] or, coupled, [f]
    p_in, p_out = (peep[:n_sig], peep[-1]) if peep is not None else (None, None)
    for start, end in spans:
        # Input projection (and bias) of the whole block in one matmul, outside the recurrence.
        xs = x[start:end].reshape(-1, n_in)
        pre = x.new_empty(end - start, batch, gsize)
        if bias is not None:
            torch.addmm(bias, xs, w_ih_t, out=pre.view(-1, gsize))
        else:
            torch.mm(xs, w_ih_t, out=pre.view(-1, gsize))
        gates.append(pre)
        blocks = pre.unflatten(-1, (gsize // hidden, hidden))  # (n, B, gates, H)
        fused_fo = coupled and peep is None  # f and o need no cell: one sigmoid for both
        sig_cols = slice(0, None, 2) if fused_fo else slice(0, n_sig)
        sig_steps = blocks[:, :, sig_cols].unbind(0)
        i_steps, f_steps = blocks[:, :, 0].unbind(0), blocks[:, :, n_sig - 1].unbind(0)
        g_pre_steps, o_steps = blocks[:, :, n_sig].unbind(0), blocks[:, :, -1].unbind(0)
        for t, a in enumerate(pre.unbind(0), start):
            r = t - start
            sig, f, o = sig_steps[r], f_steps[r], o_steps[r]
            a.addmm_(h, w_hh_t)  # a = W [h_{t-1}, x_t] + b, all gates, in place
            if p_in is not None:  # [i, f] += [w_ci, w_cf] * C_{t-1}  (coupled: f += w_cf * C_{t-1})
                sig.addcmul_(c.unsqueeze(1), p_in)
            sig.sigmoid_()  # i_t, f_t (coupled: f_t, and o_t too if no peepholes)
            g = _tanh_of_block(g_pre_steps[r], g_steps[t])  # C~_t
            if coupled:  # C_t = f C_{t-1} + (1 - f) C~_t  =  C~_t + f (C_{t-1} - C~_t)
                c = torch.lerp(g, c, f, out=c_steps[t])
            else:  # C_t = f C_{t-1} + i C~_t
                c = torch.mul(f, c, out=c_steps[t]).addcmul_(i_steps[r], g)
            if p_out is not None:  # o_t = σ(... + w_co * C_t)
                o.addcmul_(c, p_out)
            if not fused_fo:
                o.sigmoid_()
            tc = torch.tanh(c, out=tc_steps[t])
            h = torch.mul(o, tc, out=h_steps[t])  # h_t = o_t tanh(C_t)
    return _Forward(hs, cs, c, gates, spans, tcs, gs)


def _inference_mode() -> contextlib.AbstractContextManager[Any]:
    """``torch.inference_mode()``, except while tracing or compiling (the ONNX exporters), which it breaks.

    Without autograd's view and version bookkeeping every tensor operation costs less: measured 25-30% of
    the whole inference call on short texts (batch 4, 10 tokens), where the per-operation cost dominates.
    """
    if torch._C._is_tracing() or torch.compiler.is_compiling():  # (torch.jit.is_tracing, untyped)
        return contextlib.nullcontext()
    return torch.inference_mode()


def _loop_forward_directions(
    x: Tensor,
    w_ih_t: Tensor,
    w_hh_t: Tensor,
    bias: Tensor | None,
    peep: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    coupled: bool,
    keep_cells: bool,
    zero_state: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Inference only: D independent layers (the two directions of a bidirectional layer, the reverse one fed
    its reversed input) in one time loop, so that each step is one ``baddbmm`` and one kernel per gate
    operation for all D instead of D of each: short texts on a CPU are bound by the per-operation overhead.

    Shapes as :func:`lstm_layer` with a leading D and the weights transposed: ``x`` (D, T, B, E), ``w_ih_t``
    (D, E, G), ``w_hh_t`` (D, H, G), ``bias`` (D, G), ``peep`` (D, k, H), ``h0``/``c0`` (D, B, H). Returns
    ``hs`` (T, D, B, H), the cell states (T, D, B, H) if ``keep_cells`` (else None) and the last cell state
    (D, B, H).

    The loop runs in inference mode (:func:`_inference_mode`); what it returns is allocated outside it (or
    copied out), so that callers get ordinary tensors, which autograd may save and in-place operations may
    change. Every view a step uses is made before the loop (one ``unbind`` per kind), so a step is the
    matmul and the gate kernels only. The cells carry a unit gate axis, (D, B, 1, H), so that the peephole
    term of i and f together broadcasts without an ``unsqueeze`` a step. ``zero_state`` says that ``h0`` and
    ``c0`` are zeros: the first step then skips what they would add (its matmul and cell terms; the same
    numbers, with fewer operations).
    """
    dirs, steps, batch, n_in = x.shape
    hidden, gsize = w_hh_t.shape[1], w_hh_t.shape[2]
    hs = x.new_empty(steps, dirs, batch, hidden)
    kept = x.new_empty(steps, dirs, batch, 1, hidden) if keep_cells else None
    with _inference_mode():
        cells = kept if kept is not None else x.new_empty(2, dirs, batch, 1, hidden)  # else two in turn
        c_rows = cells.unbind(0)  # (D, B, 1, H) for the peephole term
        c_flat = cells.squeeze(3).unbind(0)  # (D, B, H) for the rest
        if kept is None:
            c_rows, c_flat = c_rows * ((steps + 1) // 2), c_flat * ((steps + 1) // 2)
        tc_buf = x.new_empty(dirs, batch, hidden)
        h_steps = hs.unbind(0)
        n_sig = 1 if coupled else 2
        fused_fo = coupled and peep is None  # f and o need no cell: one sigmoid for both
        p_in = peep[:, :n_sig].unsqueeze(1) if peep is not None else None  # (D, 1, n_sig, H)
        p_out = peep[:, -1].unsqueeze(1) if peep is not None else None  # (D, 1, H)
        h, c, c_row = h0, c0, c0.unsqueeze(2)
        fresh = zero_state  # h_{t-1} = C_{t-1} = 0: nothing to add from them
        spans = _time_chunks(steps, dirs * batch * gsize * x.element_size(), _INFERENCE_CHUNK_BYTES)
        # One projection buffer for all blocks (and, with two directions, one for its step-major copy): a
        # fresh allocation of this size a block costs page faults.
        size = spans[0][1] if spans else 0
        proj = x.new_empty(dirs, size * batch, gsize)
        major = x.new_empty(size, dirs, batch, gsize) if dirs > 1 else None
        for start, end in spans:
            n = end - start
            xs = x[:, start:end].reshape(dirs, -1, n_in)
            out = proj.narrow(1, 0, n * batch)
            if bias is not None:
                torch.baddbmm(bias.unsqueeze(1), xs, w_ih_t, out=out)
            else:
                torch.bmm(xs, w_ih_t, out=out)
            # step-major (n, D, B, G): each step's gates one contiguous block, which baddbmm_ updates in place
            steps_first = out.view(dirs, n, batch, gsize).transpose(0, 1)
            pre = steps_first if major is None else major.narrow(0, 0, n).copy_(steps_first)
            blocks = pre.view(n, dirs, batch, gsize // hidden, hidden)
            a_steps = pre.unbind(0)
            # select and narrow, not indexing with slices: a tensor index is parsed in Python, ~10 µs each
            sig_steps = (blocks[:, :, :, ::2] if fused_fo else blocks.narrow(3, 0, n_sig)).unbind(0)
            i_steps, f_steps = blocks.select(3, 0).unbind(0), blocks.select(3, n_sig - 1).unbind(0)
            g_pre_steps, o_steps = blocks.select(3, n_sig).unbind(0), blocks.select(3, -1).unbind(0)
            for r in range(n):
                t = start + r
                sig, f, o = sig_steps[r], f_steps[r], o_steps[r]
                if not fresh:
                    a_steps[r].baddbmm_(h, w_hh_t)  # + W_hh h_{t-1}, all gates of all D
                    if p_in is not None:
                        sig.addcmul_(c_row, p_in)
                sig.sigmoid_()
                # tanh in place on the column block: measured no slower than on a contiguous copy (batches 4
                # and 256, 1 and 2 threads; issue 16), and a kernel less than _tanh_of_block
                g = g_pre_steps[r].tanh_()
                if coupled:
                    c = torch.lerp(g, c, f, out=c_flat[t])
                elif fresh:
                    c = torch.mul(i_steps[r], g, out=c_flat[t])
                else:
                    c = torch.mul(f, c, out=c_flat[t]).addcmul_(i_steps[r], g)
                fresh = False
                c_row = c_rows[t]
                if p_out is not None:
                    o.addcmul_(c, p_out)
                if not fused_fo:
                    o.sigmoid_()
                h = torch.mul(o, torch.tanh(c, out=tc_buf), out=h_steps[t])
    if kept is None:
        return hs, None, c.clone()  # out of the scratch buffer (made in inference mode)
    return hs, kept.squeeze(3), c


class _LSTMLayerFunction(torch.autograd.Function):
    """One layer, one direction; see :func:`lstm_layer` for the backward derivation."""

    @staticmethod
    def forward(
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
        run = _loop_forward(x, w_ih, w_hh, bias, peep, h0, c0, coupled)
        ctx.coupled = coupled
        ctx.spans = run.spans
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, w_ih, w_hh, bias, peep, h0, c0, run.hs, run.cs, run.tanh_cs, run.cands, *run.gates)
        return run.hs, run.cs

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_hs: Tensor | None, grad_cs: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        x, w_ih, w_hh, bias, peep, h0, c0, hs, cs, tcs, gs, *gate_blocks = ctx.saved_tensors
        coupled: bool = ctx.coupled
        batch, n_in = x.shape[1], x.shape[2]
        hidden = w_hh.shape[1]
        gsize = w_hh.shape[0]
        need_x, need_wih, need_whh, need_b, need_p, need_h0, need_c0, _ = ctx.needs_input_grad
        grad_x = x.new_empty(x.shape) if need_x else None
        grad_wih = torch.zeros_like(w_ih) if need_wih else None
        grad_whh = torch.zeros_like(w_hh) if need_whh else None
        grad_b = torch.zeros_like(bias) if need_b and bias is not None else None
        grad_p = torch.zeros_like(peep) if need_p and peep is not None else None
        # Column blocks of the gate rows: [i, f, g, o] or, coupled, [f, g, o].
        n_sig = 1 if coupled else 2  # sigmoid gates before g
        o_cols = slice(gsize - hidden, gsize)

        da_next: Tensor | None = None  # δa_{t+1}, reaches δh_t through W_hh
        carry: Tensor | None = None  # ε_{t+1} = ∂L/∂C_t through step t+1
        for (start, end), gates in reversed(list(zip(ctx.spans, gate_blocks, strict=True))):
            c_prev = cs[start - 1 : end - 1] if start > 0 else torch.cat([c0.unsqueeze(0), cs[: end - 1]])
            tc = tcs[start:end]
            f = gates[..., (n_sig - 1) * hidden : n_sig * hidden]
            g = gs[start:end]
            o = gates[..., o_cols]
            # The gate gradients are δh_t or δC_t times factors that depend on the forward values only:
            # compute those factors for the whole block first (into the buffer that becomes δa), so the
            # sequential loop below is four element-wise operations a step.
            #   δâ^o = δh K_o,  δC = ε + δh K_h,  [δâ^i, δâ^f, δa^g] = δC [K_i, K_f, K_g],  ε = δC K_ε
            da_block = torch.empty_like(gates)
            k_i = da_block[..., :hidden]
            k_f = da_block[..., (n_sig - 1) * hidden : n_sig * hidden]
            k_g = da_block[..., n_sig * hidden : (n_sig + 1) * hidden]
            k_o = da_block[..., o_cols]
            _sigmoid_backward(tc, o, grad_input=k_o)  # K_o = tanh(C_t) σ'(o_t)
            k_h = _tanh_backward(o, tc, grad_input=torch.empty_like(tc))  # K_h = o_t (1 - tanh²C_t) ...
            if peep is not None:
                k_h.addcmul_(k_o, peep[-1])  # ... + K_o w_co
            if coupled:  # C_t = f C_{t-1} + (1 - f) C~_t
                _sigmoid_backward(c_prev - g, f, grad_input=k_f)  # K_f = (C_{t-1} - C~_t) σ'(f_t)
                _tanh_backward(1.0 - f, g, grad_input=k_g)  # K_g = (1 - f_t)(1 - C~_t²)
                k_eps = torch.addcmul(f, k_f, peep[0]) if peep is not None else f  # K_ε = f + K_f w_cf
            else:
                i = gates[..., :hidden]
                _sigmoid_backward(g, i, grad_input=k_i)  # K_i = C~_t σ'(i_t)
                _sigmoid_backward(c_prev, f, grad_input=k_f)  # K_f = C_{t-1} σ'(f_t)
                _tanh_backward(i, g, grad_input=k_g)  # K_g = i_t (1 - C~_t²)
                k_eps = f  # K_ε = f + K_i w_ci + K_f w_cf
                if peep is not None:
                    k_eps = torch.addcmul(f, k_i, peep[0]).addcmul_(k_f, peep[1])
            n_rest = gsize // hidden - 1  # gates scaled by δC: i, f, g (or f, g)
            for t in range(end - 1, start - 1, -1):
                r = t - start
                if da_next is None:  # δh_t = ∂ℓ/∂h_t + δa_{t+1} W_hh
                    dh = grad_hs[t] if grad_hs is not None else x.new_zeros(batch, hidden)
                elif grad_hs is not None:
                    dh = torch.addmm(grad_hs[t], da_next, w_hh)
                else:
                    dh = torch.mm(da_next, w_hh)
                da = da_block[r]
                da[:, o_cols].mul_(dh)  # δâ^o_t
                dc = torch.addcmul(carry, dh, k_h[r]) if carry is not None else dh * k_h[r]  # δC_t
                if grad_cs is not None:
                    dc += grad_cs[t]
                da[:, : n_rest * hidden].view(batch, n_rest, hidden).mul_(dc.unsqueeze(1))  # δâ^i, δâ^f, δa^g
                carry = dc.mul_(k_eps[r])  # ε_t
                da_next = da

            # The sums over steps, one matmul each for the whole block.
            dflat = da_block.view(-1, gsize)
            if grad_x is not None:  # ∂L/∂x_t = δa_t W_ih
                torch.mm(dflat, w_ih, out=grad_x[start:end].view(-1, n_in))
            if grad_wih is not None:  # Σ_t δa_t^T x_t
                grad_wih.addmm_(dflat.t(), x[start:end].reshape(-1, n_in))
            if grad_whh is not None:  # Σ_t δa_t^T h_{t-1}
                if start > 0:
                    grad_whh.addmm_(dflat.t(), hs[start - 1 : end - 1].view(-1, hidden))
                else:
                    grad_whh.addmm_(da_block[0].t(), h0)
                    if end > 1:
                        grad_whh.addmm_(da_block[1:].view(-1, gsize).t(), hs[: end - 1].view(-1, hidden))
            if grad_b is not None:
                grad_b += dflat.sum(0)
            if grad_p is not None:  # Σ δâ^i C_{t-1}, Σ δâ^f C_{t-1}, Σ δâ^o C_t over steps and batch
                da_sig = da_block[..., : n_sig * hidden].unflatten(-1, (n_sig, hidden))
                grad_p[:n_sig] += (da_sig * c_prev.unsqueeze(2)).sum((0, 1))
                grad_p[-1] += (da_block[..., o_cols] * cs[start:end]).sum((0, 1))
        assert da_next is not None
        grad_h0 = torch.mm(da_next, w_hh) if need_h0 else None
        grad_c0 = carry if need_c0 else None
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
    last: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One layer, one direction over the whole sequence, with a hand-written backward through time.

    Shapes: ``x`` (T, B, E); ``h0``, ``c0`` (B, H). For the standard cell ``w_ih`` (4H, E), ``w_hh`` (4H, H)
    and ``bias`` (4H,) (= b_ih + b_hh) hold the gates i, f, g, o in rows, and ``peep`` = [w_ci, w_cf, w_co]
    (3, H). For the coupled cell (``i = 1 - f``) they hold only f, g, o: (3H, E), (3H, H), (3H,), and
    ``peep`` = [w_cf, w_co] (2, H). ``peep`` None means no peepholes. ``last`` (B,) int64, if given, is the
    index of each sequence's last real step in a right-padded batch (None: T - 1 for all).

    Returns ``(hs, h_n, c_n)``: the hidden states of all steps (T, B, H) and the states at step ``last``,
    each (B, H). Every step is computed, padding included (steps after a sequence's end never influence
    the steps before it, so only the outputs there are meaningless; the caller zeroes them).

    The forward computes the input projection of a block of steps in one matmul, then per step one
    ``addmm`` for ``W_hh h_{t-1}`` and the gate arithmetic in place (one sigmoid over i and f together).
    The backward first computes, for a whole block, the factors that turn δh_t and δC_t into the gate
    gradients (they depend on forward values only), so that the sequential loop is one matmul and four
    element-wise operations a step; the weight gradients are then one matmul per block.

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
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w_ih, w_hh, bias, peep, h0, c0)):
        hs, cs = _LSTMLayerFunction.apply(x, w_ih, w_hh, bias, peep, h0, c0, coupled)
        if last is None:
            return hs, hs[-1], cs[-1]
        index = last.view(1, -1, 1).expand(1, hs.shape[1], hs.shape[2])
        return hs, hs.gather(0, index).squeeze(0), cs.gather(0, index).squeeze(0)
    with torch.no_grad():  # the inference loop, as one of D = 1 directions
        hs, cs, c_last = _loop_forward_directions(x.unsqueeze(0), w_ih.t().unsqueeze(0),
                                                  w_hh.t().contiguous().unsqueeze(0),
                                                  None if bias is None else bias.unsqueeze(0),
                                                  None if peep is None else peep.unsqueeze(0),
                                                  h0.unsqueeze(0), c0.unsqueeze(0), coupled,
                                                  keep_cells=last is not None)
    hs = hs[:, 0]
    if last is None:
        return hs, hs[-1], c_last[0]
    assert cs is not None
    index = last.view(1, -1, 1).expand(1, hs.shape[1], hs.shape[2])
    return hs, hs.gather(0, index).squeeze(0), cs[:, 0].gather(0, index).squeeze(0)


# ----------------------------------------------------------------------------------------------------------
# The module.
# ----------------------------------------------------------------------------------------------------------


class _Lengths(NamedTuple):
    """What the layers need to know about a right-padded batch (empty sequences count as length 1 in all
    but ``lengths``, ``mask`` and ``empty``; their results are replaced at the end)."""

    lengths: Tensor  # (B,) int64 on the input's device, the real lengths
    lengths_cpu: Tensor  # (B,) at least 1, on the CPU, for pack_padded_sequence
    mask: Tensor  # (T, B, 1), 1.0 at real tokens, in the input's dtype
    last: Tensor  # (B,) index of each sequence's last real token (0 for an empty one)
    reverse_index: Tensor  # (T * B,) flat (t, b) -> (len_b - 1 - t, b) inside each sequence, identity after
    empty: Tensor | None  # (B, 1) True for sequences of length 0, None if there are none


def _identity(t: Tensor | None) -> tuple[Any, ...] | None:
    """What changes when a parameter is replaced, modified in place or given new data (``.double()``, ``.to()``:
    a new data pointer; CUDA's unified addressing keeps pointers of different devices apart)."""
    return None if t is None else (id(t), t.data_ptr(), t._version, t.dtype)


def _prepare_lengths(lengths: Tensor | Sequence[int], steps: int, batch: int, like: Tensor) -> _Lengths | None:
    real_cpu = torch.as_tensor(lengths, dtype=torch.int64, device="cpu").reshape(-1)
    if real_cpu.numel() != batch:
        raise ValueError(f"lengths has {real_cpu.numel()} entries for a batch of {batch}")
    if batch and (int(real_cpu.min()) < 0 or int(real_cpu.max()) > steps):
        raise ValueError(f"lengths must lie in [0, {steps}], got {real_cpu.tolist()}")
    if bool((real_cpu == steps).all()):
        return None  # nothing padded
    lengths_cpu = real_cpu.clamp(min=1)
    real_dev, lengths_dev = real_cpu.to(like.device), lengths_cpu.to(like.device)
    t = torch.arange(steps, device=like.device).unsqueeze(1)  # (T, 1)
    inside = t < lengths_dev  # (T, B)
    source_t = torch.where(inside, lengths_dev - 1 - t, t)
    reverse_index = (source_t * batch + torch.arange(batch, device=like.device)).reshape(-1)
    empty = (real_dev == 0).unsqueeze(1) if bool((real_cpu == 0).any()) else None
    mask = (t < real_dev).unsqueeze(2).to(like.dtype)
    return _Lengths(real_dev, lengths_cpu, mask, lengths_dev - 1, reverse_index, empty)


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
        # per layer: (its parameter names, their identity and versions, their stacked transposed inference form)
        self._inference_cache: dict[int, tuple[list[str], list[Any], Any]] = {}
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        gates = 4 * hidden_size
        self._flat_names: list[str] = []
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else hidden_size * self.num_directions
            for suffix in self._suffixes():
                params: dict[str, tuple[int, ...]] = {
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
        if steps == 0:
            raise ValueError("Expected sequence length to be larger than 0 in RNN")
        states = self.num_layers * self.num_directions
        zero_state = hx is None
        if hx is None:
            zeros = x.new_zeros(states, batch, self.hidden_size)
            hx = (zeros, zeros)
        else:
            expected = (states, batch, self.hidden_size)
            if tuple(hx[0].shape) != expected or tuple(hx[1].shape) != expected:
                raise ValueError(f"hx tensors must have shape {expected}")
        pad = _prepare_lengths(lengths, steps, batch, x) if lengths is not None else None

        if self.backward == "bptt" and not (self.peephole or self.coupled):
            out, (h_n, c_n) = self._forward_fused(x, hx, pad)
        else:
            seq = x.transpose(0, 1) if self.batch_first else x
            out, h_n, c_n = self._forward_loop(seq.contiguous(), hx, pad, zero_state=zero_state)
            if self.batch_first:
                out = out.transpose(0, 1)
        if pad is not None and pad.empty is not None:  # empty sequences: zero output, initial state
            empty_rows = pad.empty.view(-1, 1, 1) if self.batch_first else pad.empty.view(1, -1, 1)
            out = out.masked_fill(empty_rows, 0.0)
            h_n, c_n = torch.where(pad.empty, hx[0], h_n), torch.where(pad.empty, hx[1], c_n)
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
        self, x: Tensor, hx: tuple[Tensor, Tensor], pad: _Lengths | None, zero_state: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """All layers and directions, time-major ``x`` (T, B, E); ``zero_state``: ``hx`` is zeros."""
        h_finals: list[Tensor] = []  # blocks of final states, concatenated at the end
        c_finals: list[Tensor] = []
        layer_in = x
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                layer_in = F.dropout(layer_in, self.dropout, training=True)
            outs: list[Tensor] = []
            if self.backward == "bptt" and not self._needs_grad(layer_in, layer):  # inference
                first, dirs = layer * self.num_directions, self.num_directions
                outs, h_ns, c_ns = self._run_directions(
                    layer_in, hx[0].narrow(0, first, dirs), hx[1].narrow(0, first, dirs), layer, pad, zero_state
                )
                h_finals.append(h_ns)
                c_finals.append(c_ns)
                layer_in = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
                continue
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
                h_finals.append(h_n.unsqueeze(0))
                c_finals.append(c_n.unsqueeze(0))
            layer_in = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        if pad is not None and self.backward != "autograd":
            layer_in = layer_in * pad.mask
        # final states in blocks of (D, B, H) (a layer without gradients) or (1, B, H); cat copies them, so
        # that they never share memory with the output
        return layer_in, torch.cat(h_finals), torch.cat(c_finals)

    def _needs_grad(self, x: Tensor, layer: int) -> bool:
        if not torch.is_grad_enabled():
            return False
        return x.requires_grad or any(
            t is not None and t.requires_grad for suffix in self._suffixes()
            for t in self._direction_params(layer, suffix).values())

    def _gate_params(self, p: dict[str, Tensor | None]) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """``w_ih, w_hh, bias, peep`` of one direction as :func:`lstm_layer` takes them (biases summed; the
        coupled cell's unused i rows dropped; the peephole vectors stacked)."""
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
        return w_ih, w_hh, bias, peep

    @staticmethod
    def _reverse(x: Tensor, pad: _Lengths | None) -> Tensor:
        """Each sequence of time-major ``x`` (T, B, F) reversed within its own length (its own inverse)."""
        if pad is None:
            return x.flip(0)
        return x.reshape(-1, x.shape[2]).index_select(0, pad.reverse_index).view_as(x)

    def _inference_params(self, layer: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """One layer's gate parameters for :func:`_loop_forward_directions`, stacked over the directions and
        transposed: made once and kept until a parameter changes (in place, or its data is replaced), since
        transposing ``W_hh`` into contiguous memory costs more than encoding a short query.

        The bias (b_ih + b_hh) is appended to ``W_ih^T`` as one more input row, (D, E + 1, G), and the bias
        slot is None: :meth:`_run_directions` appends a constant 1 to each input, so that the input
        projection is a plain matmul. Adding a bias in the matmul (``baddbmm``) first copies it into the
        whole output, a pass over the (T, B, G) projection that cost 10% of it at batch 256."""
        cached = self._inference_cache.get(layer)
        if cached is not None:
            names, key, stacked = cached
            # this check runs on every call: the parameters are looked up by the names kept, in _parameters
            # first (module attribute lookup is slow; a parametrized weight is found by getattr)
            own = self._parameters
            if [_identity(own[name] if name in own else getattr(self, name, None)) for name in names] == key:
                return stacked
        names = [f"{name}_l{layer}{suffix}" for suffix in self._suffixes() for name, t in
                 self._direction_params(layer, suffix).items() if t is not None]
        key = [_identity(getattr(self, name)) for name in names]
        with torch.no_grad():
            params = [self._gate_params(self._direction_params(layer, suffix)) for suffix in self._suffixes()]
            w_ih_t = torch.stack([q[0] for q in params]).transpose(1, 2)
            if params[0][2] is not None:
                w_ih_t = torch.cat([w_ih_t, torch.stack([q[2] for q in params]).unsqueeze(1)], dim=1)  # type: ignore[misc]
            stacked = (
                w_ih_t.contiguous(),
                torch.stack([q[1] for q in params]).transpose(1, 2).contiguous(),
                None,
                torch.stack([q[3] for q in params]) if params[0][3] is not None else None,  # type: ignore[misc]
            )
        self._inference_cache[layer] = (names, key, stacked)
        return stacked

    def _run_directions(
        self, x: Tensor, h0: Tensor, c0: Tensor, layer: int, pad: _Lengths | None, zero_state: bool = False
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Every direction of one layer without gradients, through :func:`_loop_forward_directions`: the
        outputs of each direction (T, B, H) and the final states (D, B, H). Views by ``select``: an index
        with slices costs several µs in Python, which counts on short texts."""
        w_ih_t, w_hh_t, bias, peep = self._inference_params(layer)
        dirs, n_in = self.num_directions, x.shape[2]
        with torch.no_grad():
            if dirs == 1 and w_ih_t.shape[1] == n_in:
                xs = x.unsqueeze(0)
            else:  # (D, T, B, E [+ 1]): the input, reversed for the second direction, and a 1 for the bias row
                xs = x.new_empty(dirs, x.shape[0], x.shape[1], w_ih_t.shape[1])
                xs.select(0, 0).narrow(2, 0, n_in).copy_(x)
                if dirs == 2:
                    xs.select(0, 1).narrow(2, 0, n_in).copy_(self._reverse(x, pad))
                if w_ih_t.shape[1] > n_in:
                    xs.narrow(3, n_in, 1).fill_(1.0)
            hs, cs, c_last = _loop_forward_directions(xs, w_ih_t, w_hh_t, bias, peep, h0, c0, self.coupled,
                                                      keep_cells=pad is not None, zero_state=zero_state)
            outs = [hs.select(1, 0)] + ([self._reverse(hs.select(1, 1), pad)] if dirs == 2 else [])
            if pad is None:
                return outs, hs.select(0, -1), c_last
            assert cs is not None
            index = pad.last.view(1, 1, -1, 1).expand(1, dirs, hs.shape[2], hs.shape[3])
            return outs, hs.gather(0, index).squeeze(0), cs.gather(0, index).squeeze(0)

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
        w_ih, w_hh, bias, peep = self._gate_params(p)
        if reverse:  # run the reversed sequence forwards; each sequence reversed within its own length
            x = self._reverse(x, pad)
        hs, h_n, c_n = lstm_layer(x, h0, c0, w_ih, w_hh, bias, peep, self.coupled, None if pad is None else pad.last)
        if reverse:
            hs = self._reverse(hs, pad)
        return hs, h_n, c_n
