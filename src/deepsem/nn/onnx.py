"""A small ONNX graph builder, and the recurrent nets as ONNX's own ``LSTM`` / ``GRU`` / ``RNN`` operators.

Each tower writes itself into a :class:`Graph` (its ``onnx`` method) with the operators of the ONNX standard,
from token ids and lengths to its vector; the exporter (:mod:`deepsem.deploy.export`) adds the inputs, the final
L2 normalisation and the outputs. Nodes and weights are kept as plain Python and numpy until :meth:`Graph.model`
turns them into an ``onnx.ModelProto`` (the ``onnx`` package is imported there only: it is an optional extra).

The recurrent nets map onto ONNX's recurrent operators directly, not onto an unrolled loop, so that the graph
takes any sequence length and a runtime runs its fused kernels:

* deepsem's LSTM (:mod:`deepsem.nn.lstm`) stores the gates as torch does, rows ``i, f, g, o``; ONNX wants
  ``i, o, f, c``, the two biases side by side, and peepholes ``[p_i, p_o, p_f]``.
* The coupled LSTM (``i = 1 - f``) is ONNX's ``input_forget=1``, which onnxruntime implements the other way
  round, ``f = 1 - i``. Since ``1 - σ(a) = σ(-a)``, the ONNX input gate is given minus our forget gate's rows
  (and peephole): its ``i`` is our ``1 - f``, and its ``1 - i`` is our ``f``.
* torch's GRU is ONNX's ``GRU`` with ``linear_before_reset=1``, rows ``r, z, n`` reordered to ``z, r, h``.
* Variable lengths are ONNX's ``sequence_lens``: the final state is taken at each sequence's own last token
  and the reverse direction starts there, as deepsem's LSTM and torch's packed sequences do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from deepsem.nn.lstm import LSTM

if TYPE_CHECKING:
    import onnx

#: The operator set the graphs are written for (onnxruntime >= 1.14 runs it).
OPSET = 17

_TYPES = {"float": 1, "int64": 7, "bool": 9}  # onnx.TensorProto.FLOAT, INT64, BOOL


@dataclass
class Graph:
    """Nodes, weights, inputs and outputs of one ONNX graph, in plain Python until :meth:`model`."""

    name: str = "deepsem"
    nodes: list[tuple[str, list[str], list[str], dict[str, Any]]] = field(default_factory=list)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: list[tuple[str, str, list[str | int]]] = field(default_factory=list)
    outputs: list[tuple[str, str, list[str | int]]] = field(default_factory=list)
    _count: int = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: Tensor | np.ndarray | np.generic | float | int | list[int], hint: str = "const",
              dtype: Any = None) -> str:
        """A weight (initializer) holding ``value``; tensors are detached and copied to float32 / int64."""
        if isinstance(value, Tensor):
            value = value.detach().to("cpu", torch.float32 if value.is_floating_point() else torch.int64).numpy()
        array = np.array(value, dtype=dtype) if dtype is not None or not isinstance(value, np.ndarray) else value
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        name = self.fresh(hint)
        self.weights[name] = np.require(array, requirements="C")  # not ascontiguousarray: it makes 0-d 1-d
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attributes: Any) -> Any:
        """Add a node; returns its output name (or a list of names when ``outputs > 1``)."""
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append((op_type, list(inputs), names, attributes))
        return names[0] if outputs == 1 else names

    def input(self, name: str, dtype: str, shape: list[str | int]) -> str:
        self.inputs.append((name, dtype, shape))
        return name

    def output(self, value: str, name: str, dtype: str, shape: list[str | int]) -> str:
        self.nodes.append(("Identity", [value], [name], {}))
        self.outputs.append((name, dtype, shape))
        return name

    # -- building blocks shared by the towers ---------------------------------------------------------------
    def linear(self, x: str, layer: nn.Linear) -> str:
        """``x W^T + b`` as MatMul + Add (over the last axis of any rank; int8 quantisation handles MatMul)."""
        y = self.op("MatMul", x, self.const(layer.weight.t(), "weight"))
        return self.op("Add", y, self.const(layer.bias, "bias")) if layer.bias is not None else y

    def positions_mask(self, lengths: str, steps: str) -> str:
        """Bool ``(B, T)``: position ``t`` lies inside each row's length (``steps`` a scalar int64)."""
        positions = self.op("Range", self.const(0, dtype=np.int64), steps, self.const(1, dtype=np.int64))
        return self.op("Less", self.op("Unsqueeze", positions, self.const([0])),
                       self.op("Unsqueeze", lengths, self.const([1])))

    def steps_of(self, x: str, axis: int = 1) -> str:
        """The length of ``x``'s ``axis`` as a scalar int64."""
        return self.op("Squeeze", self.op("Shape", x, start=axis, end=axis + 1), self.const([0]))

    def outside(self, inside: str) -> str:
        """An additive mask of the bool ``inside``: 0 where it holds, the lowest float elsewhere. Added to values
        well inside the float range before a max or a softmax, it leaves them out (onnxruntime runs a broadcast Add
        over the largest tensor three times faster than a Where selecting from it)."""
        return self.op("Mul", self.op("Sub", self.op("Cast", inside, to=1), self.const(np.float32(1.0))),
                       self.const(np.finfo(np.float32).max))

    def masked_max(self, x: str, inside: str, axis: int = 1) -> str:
        """Max over ``axis`` of ``x`` at the positions where ``inside`` (bool, broadcastable to ``x``) holds."""
        return self.op("ReduceMax", self.op("Add", x, self.outside(inside)), axes=[axis], keepdims=0)

    def l2_normalize(self, x: str) -> str:
        """``x / max(||x||, 1e-12)`` over the last axis, as ``torch.nn.functional.normalize``."""
        norm = self.op("ReduceL2", x, axes=[-1], keepdims=1)
        return self.op("Div", x, self.op("Max", norm, self.const(np.float32(1e-12))))

    def model(self, metadata: dict[str, str] | None = None, opset: int = OPSET) -> onnx.ModelProto:
        """The ``onnx.ModelProto`` of this graph (checked by ``onnx.checker``)."""
        import onnx
        from onnx import helper, numpy_helper

        def value_info(name: str, dtype: str, shape: list[str | int]) -> onnx.ValueInfoProto:
            return helper.make_tensor_value_info(name, _TYPES[dtype], shape)

        graph = helper.make_graph(
            [helper.make_node(op, ins, outs, name=f"{outs[0]}_node", **attrs) for op, ins, outs, attrs in self.nodes],
            self.name,
            [value_info(*i) for i in self.inputs],
            [value_info(*o) for o in self.outputs],
            initializer=[numpy_helper.from_array(array, name) for name, array in self.weights.items()],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="deepsem")
        model.ir_version = min(model.ir_version, 8)  # readable by onnxruntime releases back to 1.14
        for key, value in (metadata or {}).items():
            model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
        onnx.checker.check_model(model)
        return model


# -- recurrent nets ----------------------------------------------------------------------------------------
def _rows(weight: Tensor, hidden: int, order: list[int], scale: list[float] | None = None) -> Tensor:
    """The gate blocks of ``weight`` (rows ``hidden`` apiece) in ``order``, each times its ``scale``."""
    blocks = weight.detach().float().split(hidden)
    scale = scale or [1.0] * len(order)
    return torch.cat([blocks[k] * s for k, s in zip(order, scale, strict=True)])


def _direction_weights(rnn: nn.Module, layer: int, suffix: str) -> dict[str, Tensor | None]:
    def get(name: str) -> Tensor | None:
        value = getattr(rnn, f"{name}_l{layer}{suffix}", None)
        return None if value is None else value.detach().float()

    return {name: get(name) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh",
                                          "weight_ci", "weight_cf", "weight_co")}


def _onnx_lstm_weights(rnn: LSTM, p: dict[str, Tensor | None]) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """W, R, B (both biases) and P of one direction in ONNX's gate order ``i, o, f, c``."""
    hidden = rnn.hidden_size
    zeros = torch.zeros(4 * hidden)
    b_ih = p["bias_ih"] if p["bias_ih"] is not None else zeros
    b_hh = p["bias_hh"] if p["bias_hh"] is not None else zeros
    w_ih, w_hh = p["weight_ih"], p["weight_hh"]
    assert w_ih is not None and w_hh is not None
    zero_p = torch.zeros(hidden)
    ci, cf, co = (p[name] if p[name] is not None else zero_p for name in ("weight_ci", "weight_cf", "weight_co"))
    assert ci is not None and cf is not None and co is not None
    if rnn.coupled:  # ONNX input gate := minus our forget gate; its forget gate (1 - i) is then ours
        order, scale = [1, 3, 1, 2], [-1.0, 1.0, 0.0, 1.0]
        peep = torch.cat([-cf, co, zero_p]) if rnn.peephole else None
    else:
        order, scale = [0, 3, 1, 2], [1.0, 1.0, 1.0, 1.0]
        peep = torch.cat([ci, co, cf]) if rnn.peephole else None
    return (_rows(w_ih, hidden, order, scale), _rows(w_hh, hidden, order, scale),
            torch.cat([_rows(b_ih, hidden, order, scale), _rows(b_hh, hidden, order, scale)]), peep)


def _onnx_torch_rnn_weights(rnn: nn.GRU | nn.RNN, p: dict[str, Tensor | None]) -> tuple[Tensor, Tensor, Tensor]:
    """W, R, B of one direction of torch's GRU (rows r, z, n -> ONNX z, r, h) or tanh RNN."""
    hidden = rnn.hidden_size
    gates = 3 if isinstance(rnn, nn.GRU) else 1
    order = [1, 0, 2] if gates == 3 else [0]
    zeros = torch.zeros(gates * hidden)
    w_ih, w_hh = p["weight_ih"], p["weight_hh"]
    assert w_ih is not None and w_hh is not None
    b_ih = p["bias_ih"] if p["bias_ih"] is not None else zeros
    b_hh = p["bias_hh"] if p["bias_hh"] is not None else zeros
    return (_rows(w_ih, hidden, order), _rows(w_hh, hidden, order),
            torch.cat([_rows(b_ih, hidden, order), _rows(b_hh, hidden, order)]))


def rnn(g: Graph, module: nn.Module, x: str, lengths: str, time_major: bool = False) -> tuple[str, str]:
    """Run ``module`` (deepsem's LSTM, torch's GRU or RNN; batch first) over ``x`` ``(B, T, E)`` (``(T, B, E)`` with
    ``time_major``: gathering embeddings by transposed ids is cheaper than transposing them) with ``lengths``
    ``(B,)`` int64 (each >= 1): the last layer's outputs as the operator gives them, time-major ``(T, D, B, H)``
    (undefined past each length: :func:`pool_steps` masks them), and its final states ``(D, B, H)`` at each
    sequence's own end. The outputs stay time-major: pooling them there saves transposing the largest tensor."""
    if not isinstance(module, LSTM | nn.GRU | nn.RNN):
        raise TypeError(f"no ONNX form for the recurrent net {type(module).__name__}")
    if isinstance(module, nn.RNN) and module.nonlinearity != "tanh":
        raise ValueError("only the tanh RNN has an ONNX form here")
    directions = 2 if module.bidirectional else 1
    hidden = module.hidden_size
    seq_lens = g.op("Cast", lengths, to=6)  # int32, as ONNX's recurrent operators take it
    layer_in = x if time_major else g.op("Transpose", x, perm=[1, 0, 2])  # time-major (T, B, E)
    y_h = ""
    for layer in range(module.num_layers):
        per_direction = [_direction_weights(module, layer, suffix)
                         for suffix in (("", "_reverse") if directions == 2 else ("",))]
        attributes: dict[str, Any] = {"hidden_size": hidden,
                                      "direction": "bidirectional" if directions == 2 else "forward"}
        if isinstance(module, LSTM):
            parts = [_onnx_lstm_weights(module, p) for p in per_direction]
            inputs = [g.const(torch.stack([q[k] for q in parts]), name)  # type: ignore[misc]
                      for k, name in ((0, "W"), (1, "R"), (2, "B"))] + [seq_lens, "", ""]
            peeps = [q[3] for q in parts if q[3] is not None]
            if peeps:
                inputs.append(g.const(torch.stack(peeps), "P"))
            if module.coupled:
                attributes["input_forget"] = 1
            op_type, n_out = "LSTM", 3
        else:
            parts3 = [_onnx_torch_rnn_weights(module, p) for p in per_direction]
            inputs = [g.const(torch.stack([q[k] for q in parts3]), name) for k, name in ((0, "W"), (1, "R"), (2, "B"))]
            inputs.append(seq_lens)
            if isinstance(module, nn.GRU):
                op_type, n_out = "GRU", 2
                attributes["linear_before_reset"] = 1
            else:
                op_type, n_out = "RNN", 2
        outs = g.op(op_type, layer_in, *inputs, outputs=n_out, **attributes)
        y, y_h = outs[0], outs[1]
        if layer + 1 < module.num_layers:  # Y (T, D, B, H) -> (T, B, D*H), the next layer's input
            layer_in = g.op("Reshape", g.op("Transpose", y, perm=[0, 2, 1, 3]), g.const([0, 0, -1]))
    return y, y_h


def steps_by_row(g: Graph, y: str) -> str:
    """A recurrent operator's time-major output ``(T, D, B, H)`` as rows of steps ``(B, T, D*H)``, the directions
    side by side as torch concatenates them."""
    return g.op("Reshape", g.op("Transpose", y, perm=[2, 0, 1, 3]), g.const([0, 0, -1]))


def states_by_row(g: Graph, states: str) -> str:
    """Final states ``(D, B, H)`` as rows ``(B, D*H)``, the directions side by side as torch concatenates them."""
    return g.op("Reshape", g.op("Transpose", states, perm=[1, 0, 2]), g.const([0, -1]))


def pool_steps(g: Graph, y: str, lengths: str, how: str) -> str:
    """``"max"`` or ``"mean"`` over the steps inside each length of a recurrent operator's time-major output ``y``
    ``(T, D, B, H)``: rows ``(B, D*H)``."""
    inside = g.positions_mask(lengths, g.steps_of(y, axis=0))  # (B, T)
    inside = g.op("Unsqueeze", g.op("Transpose", inside, perm=[1, 0]), g.const([1, 3]))  # (T, 1, B, 1)
    if how == "max":
        pooled = g.masked_max(y, inside, axis=0)
    else:
        summed = g.op("ReduceSum", g.op("Mul", y, g.op("Cast", inside, to=1)), g.const([0]), keepdims=0)
        count = g.op("Cast", g.op("Max", lengths, g.const(1, dtype=np.int64)), to=1)
        pooled = g.op("Div", summed, g.op("Unsqueeze", count, g.const([0, 2])))  # (D, B, H) / (1, B, 1)
    return states_by_row(g, pooled)
