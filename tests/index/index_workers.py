"""Index writes run in child processes by test_index_faults.py (imported by name in the forkserver, so it must
stay a plain module beside the tests): the documents, the writes, and a kill hook."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import deepsem
from deepsem.index import Document, Index
from deepsem.index import vector_index as vi

TEXTS = ["信用卡怎么还款", "信用卡还款日期", "我想办一张信用卡", "贷款利率是多少", "怎么申请贷款", "银行卡丢了怎么办",
         "挂失银行卡", "火车票怎么买", "买火车票", "手机银行登录不了", "忘记登录密码", "修改密码", "今天天气很好",
         "明天会下雨吗", "提高信用卡额度", "信用卡额度太低"]
BASE = [Document(f"d{i}", t, {"n": i}) for i, t in enumerate(TEXTS)]
EXTRA = [Document(f"e{i}", t + "吗", {"n": 100 + i}) for i, t in enumerate(TEXTS[:6])]
NEW = BASE[5:] + EXTRA
DELETE = ["d1", "d4", "d9"]
QUERIES = ["信用卡还款", "火车票", "密码", "天气"]
OPS = ("build-new", "build", "add", "delete", "rebuild")


def initial(op: str, directory: Path, model: Any, lexical: bool) -> None:
    """The state before ``op``: no index for build-new; BASE (less DELETE for rebuild) otherwise."""
    if op == "build-new":
        return
    index = Index.build(model, BASE, directory, lexical=lexical)
    if op == "rebuild":
        index.delete(DELETE)


def prepare(op: str, directory: Path, model_dir: Path, lexical: bool) -> Callable[[], object]:
    """Load what the write needs; the returned call does the write itself."""
    if op in ("build-new", "build"):
        model = deepsem.load(model_dir)
        docs = BASE if op == "build-new" else NEW
        return lambda: Index.build(model, docs, directory, lexical=lexical, lock_timeout=30)
    index = Index.load(directory)
    if op == "add":
        return lambda: index.add(EXTRA, lock_timeout=30)
    if op == "delete":
        return lambda: index.delete(DELETE, lock_timeout=30)
    return lambda: index.rebuild(lock_timeout=30)


def write_and_die(op: str, directory: str, model_dir: str, lexical: bool, kill_at: int | None, started: Any) -> None:
    """Child: do ``op``; SIGKILL itself at the ``kill_at``-th step of the write (or let the parent kill it)."""
    import torch

    torch.set_num_threads(1)
    write = prepare(op, Path(directory), Path(model_dir), lexical)
    if kill_at is not None:
        steps = [0]

        def hook(what: str) -> None:
            steps[0] += 1
            if steps[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        vi._fault_hook = hook
    started.set()
    write()


def add_together(directory: str, ids: list[str], barrier: Any) -> None:
    """Child: load the index, wait until every writer has, then add documents ``ids``."""
    import torch

    torch.set_num_threads(1)
    index = Index.load(directory)
    barrier.wait(60)
    index.add([Document(i, f"文档{i}号", {"by": os.getpid()}) for i in ids], lock_timeout=120)
