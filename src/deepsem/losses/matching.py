"""The pair objectives of the two-tower model, as one module that owns the model (so DDP can wrap it)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from deepsem.config import COSENT_LOSSES, COSENT_SCALE, TrainConfig
from deepsem.losses.functional import cosent_loss, hinge_loss, negative_scores, pointwise_loss, softmax_loss
from deepsem.models import TwoTowerModel

#: ``TrainConfig.loss`` values with a softmax (or hinge) term over negatives.
SOFTMAX_LOSSES = ("softmax", "hinge", "pointwise+softmax", "cosent+softmax")
#: Mined (``negatives="hard"``) documents are encoded in this many groups of similar length: a recurrent tower runs
#: every step up to its input's width, and a query's mined documents are of any length, not its batch's.
SAMPLED_GROUPS = 4


class MatchingLoss(nn.Module):
    """The loss of a batch of text pairs, as ``config.loss`` and ``config.negatives`` choose.

    A batch (see ``deepsem.tasks.matching.PairCollate``) is a dict of tensors: ``q_ids``/``q_len`` and
    ``d_ids``/``d_len`` (the pairs' texts, padded), ``labels`` ``(B,)``, ``positive`` ``(P,)`` (rows of the
    positive pairs), ``same`` ``(P, B)`` (documents with the text of a query's positive), ``same_q`` ``(P, P)``,
    and with sampled negatives ``s_ids``/``s_len`` (``P * K`` documents) and ``clash`` ``(P, K)`` (a sampled
    document equal to the positive). Every model call happens here, in the order queries, documents, sampled
    documents (the order of dropout's random draws).

    Under a process group of more than one rank (DDP, each rank holding its slice of the global batch) and with
    ``gather``, the in-batch negatives are those of the whole global batch: see :class:`_Gathered`.
    ``gather=False``: each rank scores its queries against its local documents only (and takes local means);
    default: ``config.gather_negatives``.
    """

    def __init__(self, model: TwoTowerModel, config: TrainConfig, gather: bool | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.gather = config.gather_negatives if gather is None else gather

    def _group(self) -> _Gathered | None:
        """The gathering helper when this forward runs on one of several ranks with gathering on, else None."""
        if self.gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return _Gathered()
        return None

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        cfg, model = self.config, self.model
        q = model.encode(batch["q_ids"], batch["q_len"], "query")
        d = model.encode(batch["d_ids"], batch["d_len"], "doc")
        group = self._group()
        loss = q.new_zeros(())
        if cfg.loss in ("pointwise", "pointwise+softmax"):
            term = pointwise_loss((q * d).sum(-1), (batch["labels"] > 0.5).float(), model.gamma, model.bias)
            loss = loss + (term if group is None else group.rescale(term, len(d)))
        if cfg.loss in COSENT_LOSSES:  # under DDP: each rank ranks its own pairs, the ranks' terms averaged by rows
            scale = COSENT_SCALE if cfg.cosent_scale is None else cfg.cosent_scale
            term = cosent_loss((q * d).sum(-1), batch["labels"], scale)
            loss = loss + (term if group is None else group.rescale(term, len(d)))
        p = batch["positive"]
        if cfg.loss in SOFTMAX_LOSSES and group is not None:
            loss = loss + cfg.softmax_weight * self._gathered_term(batch, q, d, p, group)
        elif cfg.loss in SOFTMAX_LOSSES and len(p):
            loss = loss + cfg.softmax_weight * self._negatives_term(batch, q, d, p)
        if not loss.requires_grad:  # a batch without a positive pair under a softmax/hinge loss: nothing to learn
            loss = 0.0 * (q.sum() + d.sum())
        return loss

    def _encode_sampled(self, batch: dict[str, Tensor]) -> Tensor:
        """The sampled documents' vectors ``(P * K, dim)``: in one call, or for hard negatives in
        :data:`SAMPLED_GROUPS` length-sorted groups, each trimmed to its longest (the other modes keep their one
        call, and so their dropout draws and results)."""
        ids, lengths = batch["s_ids"], batch["s_len"]
        if self.config.negatives != "hard" or len(lengths) < 2 * SAMPLED_GROUPS:
            return self.model.encode(ids, lengths, "doc")
        order = torch.argsort(lengths, stable=True)
        parts = [self.model.encode(ids[rows, : max(int(lengths[rows].max()), 1)], lengths[rows], "doc")
                 for rows in order.tensor_split(SAMPLED_GROUPS)]
        return torch.cat(parts)[torch.argsort(order)]

    def _negatives_term(self, batch: dict[str, Tensor], q: Tensor, d: Tensor, p: Tensor) -> Tensor:
        """The softmax (or hinge) term of the positive pairs ``p`` against their negatives."""
        cfg, model = self.config, self.model
        sampled = None
        if "s_ids" in batch:
            sampled = self._encode_sampled(batch).view(len(p), cfg.num_negatives, -1)
        pos, neg = negative_scores(q[p], d, p, same_doc=batch["same"], sampled=sampled,
                                   in_batch=cfg.negatives != "random")
        if "clash" in batch:
            k = cfg.num_negatives
            neg = torch.cat([neg[:, : neg.shape[1] - k], neg[:, -k:].masked_fill(batch["clash"], float("-inf"))],
                            dim=1)
        if cfg.loss == "hinge":
            return hinge_loss(pos, neg, cfg.margin)
        term = softmax_loss(pos, neg, model.gamma)
        if cfg.symmetric and model.config.shared_towers and cfg.negatives != "random":
            # the other direction: each positive document picks its query among the batch's queries
            rows = torch.arange(len(p), device=p.device)
            rpos, rneg = negative_scores(d[p], q[p], rows, same_doc=batch["same_q"])
            term = 0.5 * (term + softmax_loss(rpos, rneg, model.gamma))
        return term

    def _gathered_term(self, batch: dict[str, Tensor], q: Tensor, d: Tensor, p: Tensor, group: _Gathered) -> Tensor:
        """:meth:`_negatives_term` over the global batch: this rank's positive pairs against the documents of every
        rank (their rows offset by this rank's place), the per-query sampled negatives staying per query (they
        are never gathered, so no query ever meets another's hard negative as its positive).

        Every rank runs the same collectives in the same order, with or without positive pairs of its own (the
        backward of a gather is a collective too: the result always depends on the gathered tensors)."""
        cfg, model = self.config, self.model
        in_batch = cfg.negatives != "random"
        n_pos = group.total(len(p))
        if n_pos == 0:
            return 0.0 * d.sum()
        sampled = None
        if "s_ids" in batch:
            sampled = self._encode_sampled(batch).view(len(p), cfg.num_negatives, -1)
        if not in_batch:  # only sampled negatives: nothing to gather, the mean is still the global one
            if not len(p):
                return self._reduce(None, None, group, n_pos) + 0.0 * d.sum()
            pos, neg = negative_scores(q[p], d, p, sampled=sampled, in_batch=False)
            neg = neg.masked_fill(batch["clash"], float("-inf")) if "clash" in batch else neg
            return self._reduce(pos, neg, group, n_pos)
        d_all, offset = group.rows(d)
        d_keys = _keys(batch, "d")
        same = group.same(d_keys[p], d_keys, batch["same"], offset)
        anchor = 0.0 * d_all.sum()  # keeps the gather in every rank's graph
        if not len(p):
            term = self._reduce(None, None, group, n_pos) + anchor
        else:
            pos, neg = negative_scores(q[p], d_all, p + offset, same_doc=same, sampled=sampled)
            if "clash" in batch:
                k = cfg.num_negatives
                neg = torch.cat([neg[:, : neg.shape[1] - k], neg[:, -k:].masked_fill(batch["clash"], float("-inf"))],
                                dim=1)
            term = self._reduce(pos, neg, group, n_pos) + anchor
        if cfg.symmetric and model.config.shared_towers and cfg.loss != "hinge":
            # the other direction: each positive document picks its query among the global batch's positive queries
            q_keys = _keys(batch, "q")[p]
            q_all, q_offset = group.rows(q[p])
            same_q = group.same(q_keys, q_keys, batch["same_q"], q_offset)
            back = 0.0 * q_all.sum()
            if len(p):
                rows = torch.arange(len(p), device=p.device) + q_offset
                rpos, rneg = negative_scores(d[p], q_all, rows, same_doc=same_q)
                back = back + group.rescale(softmax_loss(rpos, rneg, model.gamma), len(p), n_pos)
            term = 0.5 * (term + back)
        return term

    def _reduce(self, pos: Tensor | None, neg: Tensor | None, group: _Gathered, n_pos: int) -> Tensor:
        """The softmax (or hinge) term of this rank's rows (none: ``pos`` is None), scaled to its share of the
        global mean (see :meth:`_Gathered.rescale`); every rank joins the hinge's count of negatives."""
        cfg = self.config
        if cfg.loss == "hinge":
            finite = 0 if neg is None else int(torch.isfinite(neg).sum())
            total = group.total(finite)
            if pos is None or neg is None:
                return self.model.bias.new_zeros(())
            return group.rescale(hinge_loss(pos, neg, cfg.margin), finite, total)
        if pos is None or neg is None:
            return self.model.bias.new_zeros(())
        return group.rescale(softmax_loss(pos, neg, self.model.gamma), len(pos), n_pos)


def _keys(batch: dict[str, Tensor], side: str) -> Tensor:
    """What identifies each text of one side of the batch across ranks: its row in the text table when the batch
    carries ``q_rows``/``d_rows`` (exact: what the ``same`` masks compare), else :func:`_text_keys`."""
    rows = batch.get(f"{side}_rows")
    return rows.to(torch.int64) if rows is not None else _text_keys(batch[f"{side}_ids"])


def _text_keys(ids: Tensor) -> Tensor:
    """A 64-bit key per padded row of token ids (equal rows, equal keys, a collision being unlikely; padding ids
    are 0 and add nothing, so a key does not depend on the batch's width): how a rank recognises another rank's
    document with the text of its query's positive, which must not count as a negative. The single-process
    ``same`` mask compares rows of the text table; two texts with the same token ids count as the same here."""
    t = torch.arange(1, ids.shape[1] + 1, dtype=torch.int64, device=ids.device)
    w = t * -7046029254386353131  # splitmix64 of the position: a fixed odd-ish weight per position
    w = (w ^ (w >> 30)) * -4658895280553007687
    w = (w ^ (w >> 27)) * -7723592293110705685
    w = (w ^ (w >> 31)) | 1
    return (ids.to(torch.int64) * w).sum(1)


class _Gathered:
    """Collectives over the default process group for a loss computed on a global batch split across ranks.

    The scaling, derived: with N global rows, the single-process loss is ``L = (1/N) sum_i l_i`` over all rows.
    Rank r computes ``L_r = (W/N) sum_{i on r} l_i`` (``rescale``: its local mean times ``n_r W / N``), where the
    ``l_i`` of rank r depend on its own queries and (through the gather) on every rank's documents. The
    differentiable ``all_gather`` sends back to each rank the sum over all ranks of the gradient of their loss
    with respect to its documents, so rank r's parameter gradient is ``g_r = sum_s dL_s/dtheta`` restricted to the
    computations of rank r (its queries, its documents). DDP averages: ``(1/W) sum_r g_r = (1/W) d(sum_s L_s)/dtheta
    = d((1/N) sum_i l_i)/dtheta = dL/dtheta``, the single-process gradient of the same global batch. The loss a
    rank reports is ``L_r``; the mean of the ``L_r`` over the ranks is ``L``.
    """

    def __init__(self) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def sizes(self, n: int, device: torch.device) -> list[int]:
        """Every rank's ``n``, in rank order."""
        mine = torch.tensor([n], dtype=torch.int64, device=device)
        out = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(out, mine)
        return [int(x) for x in out]

    def total(self, n: int) -> int:
        """The sum of every rank's ``n`` (counted on the device the backend takes: CPU for gloo, GPU for nccl)."""
        return sum(self.sizes(n, torch.device("cpu") if dist.get_backend() == "gloo" else _cuda()))

    def rescale(self, mean: Tensor, n: int, total: int | None = None) -> Tensor:
        """A local mean over ``n`` rows turned into this rank's share of the global mean, scaled by the world size
        so that DDP's average of the gradients is the single-process gradient."""
        total = self.total(n) if total is None else total
        return mean * (n * self.world / max(total, 1)) if n else 0.0 * mean.nan_to_num()

    def rows(self, x: Tensor) -> tuple[Tensor, int]:
        """The rows of every rank, in rank order, with this rank's ``x`` in its place (the path its gradient takes
        directly); the other ranks' rows carry their gradients back to them. Also where this rank's rows start."""
        from torch.distributed.nn.functional import all_gather

        sizes = self.sizes(x.shape[0], x.device)
        width = max(sizes)
        padded = torch.cat([x, x.new_zeros((width - x.shape[0], *x.shape[1:]))]) if width > x.shape[0] else x
        # the group named at each call: all_gather's default is the group of the first run in this process, which a
        # later run (a new process group, e.g. a second train() call) would no longer find
        parts = list(all_gather(padded.contiguous(), group=dist.group.WORLD))
        parts[self.rank] = x
        return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)]), sum(sizes[: self.rank])

    def same(self, own: Tensor, keys: Tensor, local: Tensor, offset: int) -> Tensor:
        """``(P, N)`` False-negative mask over the global rows: ``own`` ``(P,)`` keys of this rank's positives against
        every rank's ``keys``; this rank's own columns are the exact ``local`` ``(P, n)`` mask."""
        sizes = self.sizes(keys.shape[0], keys.device)
        width = max(sizes)
        padded = torch.cat([keys, keys.new_zeros(width - keys.shape[0])])
        parts = [torch.zeros_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        every = torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])
        mask = own[:, None] == every[None, :]
        mask[:, offset : offset + keys.shape[0]] = local
        return mask


def _cuda() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())
