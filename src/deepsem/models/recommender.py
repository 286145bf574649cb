"""The two-tower recommender: a user's behaviour sequence is the query, items are the documents.

    item i  -> id embedding + mean(category embeddings) + title tower(title)            = x_i   (E)
            -> dropout -> Linear -> L2-normalise                                         = v_i   (item tower)
    history -> x_{i_1} ... x_{i_t} -> recurrent net (unidirectional) -> h_t (+ user features)
            -> dropout -> Linear -> L2-normalise                                         = u_t   (user tower)
    score(u, i) = gamma * cos(u_t, v_i)

The history items enter the user tower through the item tower's own inputs ``x_i`` (shared tables), so an item
learnt as a target is understood in a history and the other way round. Because the recurrent net runs forwards
only, ``u_t`` depends on the items up to ``t`` and on nothing after: one pass over a sequence gives the user
vector for predicting each next item (trained at every position, as in GRU4Rec), and at serving time the user
tower runs alone on a fresh history.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deepsem.config import RecommenderConfig, TowerConfig
from deepsem.nn.onnx import rnn as onnx_rnn
from deepsem.towers import build_tower
from deepsem.towers.recurrent import build_rnn, run_rnn

if TYPE_CHECKING:
    from deepsem.nn.onnx import Graph


class ItemTower(nn.Module):
    """Item positions ``(...)`` (1..n_items; 0 is padding) -> inputs ``x`` ``(..., E)`` or vectors ``(..., D)``.

    The item features are buffers set by :meth:`set_features`: ``categories`` ``(n_items + 1, C)`` and
    ``title`` ``(n_items + 1, T)`` hold feature / token ids right-padded with 0. The title goes through a bag of
    word embeddings (``title_encoder="bag"``) or one of deepsem's text towers, run once per distinct item."""

    categories: Tensor
    title: Tensor

    def __init__(self, config: RecommenderConfig) -> None:
        super().__init__()
        c = config
        e = c.embedding_dim
        self.id_embedding = nn.Embedding(c.n_items + 1, e, padding_idx=0)
        self.category_embedding = nn.EmbeddingBag(c.n_categories + 1, e, mode="mean", padding_idx=0)
        self.title_embedding = (nn.EmbeddingBag(c.n_title_tokens + 1, e, mode="mean", padding_idx=0)
                                if c.title_encoder == "bag" else None)
        self.title_tower = (build_tower(TowerConfig(encoder=c.title_encoder, vocab_size=c.n_title_tokens + 1,
                                                    embedding_dim=e, output_dim=e, dropout=c.dropout,
                                                    embedding_dropout=c.dropout, orthogonal_init=c.orthogonal_init))
                            if c.title_encoder not in ("none", "bag") else None)
        for table in (self.id_embedding, self.category_embedding, self.title_embedding):
            if table is not None:
                nn.init.normal_(table.weight, std=e**-0.5)
                with torch.no_grad():
                    table.weight[0].zero_()
        self.dropout = nn.Dropout(c.dropout)
        self.proj = nn.Linear(e, c.output_dim)
        self.register_buffer("categories", torch.zeros(c.n_items + 1, 1, dtype=torch.long), persistent=False)
        self.register_buffer("title", torch.zeros(c.n_items + 1, 1, dtype=torch.long), persistent=False)

    def set_features(self, categories: Tensor | None = None, title: Tensor | None = None) -> None:
        rows = self.id_embedding.num_embeddings
        for name, value in (("categories", categories), ("title", title)):
            if value is None:
                continue
            if value.ndim != 2 or value.shape[0] != rows:
                raise ValueError(f"{name} features must have shape ({rows}, width), got {tuple(value.shape)}")
            setattr(self, name, value.to(dtype=torch.long, device=self.id_embedding.weight.device))

    def inputs(self, items: Tensor) -> Tensor:
        flat = items.reshape(-1)
        x = self.id_embedding(flat) + self.category_embedding(self.categories[flat])
        if self.title_embedding is not None:
            x = x + self.title_embedding(self.title[flat])
        elif self.title_tower is not None:
            distinct, where = torch.unique(flat, return_inverse=True)
            ids = self.title[distinct]
            lengths = (ids > 0).sum(1)
            x = x + self.title_tower(ids, lengths)[where] * (lengths[where] > 0).unsqueeze(-1)
        return x.reshape(*items.shape, -1)

    def forward(self, items: Tensor) -> Tensor:
        return F.normalize(self.proj(self.dropout(self.inputs(items))), dim=-1)


class UserTower(nn.Module):
    """Item inputs ``(B, T, E)``, right-padded, with lengths ``(B,)`` and user-feature ids ``(B, F)`` ->
    a normalised user vector after every step ``(B, T, D)``."""

    def __init__(self, config: RecommenderConfig) -> None:
        super().__init__()
        c = config
        self.rnn = build_rnn(c.encoder, c.embedding_dim, c.hidden_size, c.num_layers, bidirectional=False,
                             dropout=c.dropout, orthogonal=c.orthogonal_init)
        self.input_dropout = nn.Dropout(c.dropout)
        self.feature_embedding = nn.EmbeddingBag(c.n_user_features + 1, c.hidden_size, mode="mean", padding_idx=0)
        nn.init.normal_(self.feature_embedding.weight, std=c.hidden_size**-0.5)
        with torch.no_grad():
            self.feature_embedding.weight[0].zero_()
        self.dropout = nn.Dropout(c.dropout)
        self.proj = nn.Linear(c.hidden_size, c.output_dim)

    def forward(self, x: Tensor, lengths: Tensor, features: Tensor | None = None) -> Tensor:
        output, _ = run_rnn(self.rnn, self.input_dropout(x), lengths)
        if features is not None:
            output = output + self.feature_embedding(features).unsqueeze(1)
        return F.normalize(self.proj(self.dropout(output)), dim=-1)


    def onnx(self, g: Graph, x: str, lengths: str, features: str | None, item_inputs: ItemTower) -> str:
        """The user vector after each history's last item ``(B, D)`` in ONNX operators (:mod:`deepsem.nn.onnx`);
        ``x`` holds item rows ``(B, T)``, whose inputs are :meth:`ItemTower.inputs` of every item, a table."""
        with torch.no_grad():
            table = item_inputs.inputs(torch.arange(item_inputs.id_embedding.num_embeddings))
        steps = g.op("Gather", g.const(table, "item_inputs"), g.op("Transpose", x, perm=[1, 0]))  # (T, B, E)
        _, h_n = onnx_rnn(g, self.rnn, steps, lengths, time_major=True)
        user = g.op("Squeeze", h_n, g.const([0]))  # one direction: (B, H) at each history's last item
        if features is not None:  # EmbeddingBag mean without the padding rows
            kept = g.op("Cast", g.op("Greater", features, g.const(0, dtype=np.int64)), to=1)
            rows = g.op("Mul", g.op("Gather", g.const(self.feature_embedding.weight, "features"), features),
                        g.op("Unsqueeze", kept, g.const([2])))
            count = g.op("Max", g.op("ReduceSum", kept, g.const([1]), keepdims=1), g.const(np.float32(1.0)))
            user = g.op("Add", user, g.op("Div", g.op("ReduceSum", rows, g.const([1]), keepdims=0), count))
        return g.l2_normalize(g.linear(user, self.proj))


class TwoTowerRecommender(nn.Module):
    """The item tower, the user tower and the softmax temperature ``gamma`` (learned in log space)."""

    def __init__(self, config: RecommenderConfig) -> None:
        super().__init__()
        self.config = config
        self.item_tower = ItemTower(config)
        self.user_tower = UserTower(config)
        self.log_gamma = nn.Parameter(torch.tensor(math.log(config.gamma)), requires_grad=config.learn_gamma)

    @property
    def gamma(self) -> Tensor:
        return self.log_gamma.exp().clamp(max=100.0)

    def user_steps(self, history: Tensor, lengths: Tensor, features: Tensor | None = None) -> Tensor:
        """User vectors after each step ``(B, T, D)`` of right-padded item positions ``history`` ``(B, T)``."""
        return self.user_tower(self.item_tower.inputs(history), lengths, features)

    def user_vectors(self, history: Tensor, lengths: Tensor, features: Tensor | None = None) -> Tensor:
        """The vector after each history's last item ``(B, D)``; a history must not be empty."""
        if bool((lengths < 1).any()):
            raise ValueError("an empty history has no user vector; fall back to popularity")
        steps = self.user_steps(history, lengths, features)
        return steps[torch.arange(history.shape[0], device=history.device), lengths - 1]

    def item_vectors(self, items: Tensor | None = None) -> Tensor:
        """Vectors of ``items`` (default: every item, rows 1..n_items, in that order)."""
        if items is None:
            items = torch.arange(1, self.config.n_items + 1, device=self.log_gamma.device)
        return self.item_tower(items)
