"""deepsem tried as a careless or hostile user would: bad input files, kills, crafted files, HTTP probes, an
OpenAPI fuzzer and a load test, each case generated deterministically into a temporary folder.

    python bench/misuse.py [--data-dir ../shared/datasets] [--out bench/results/misuse.json] [--only KIND]
                           [--jobs 1] [--mode fork|subprocess] [--merge EARLIER.json]

KIND is bad (bad input files, and misused options), crafted (model / tokenizer / checkpoint / index files,
folders beside an index, re-training into an existing --out), kills (SIGKILL at seeded random moments and, by
fault injection in the forked child, just before a chosen rename: between a checkpoint's files, before an
index's CURRENT switch; concurrent index writers) or http (probes, Schemathesis, bench/soak.py when present).
``--merge`` keeps an earlier JSON's cases of the families not run now, so one family can be re-run into a full
table.

Every case runs the installed ``deepsem`` command (``python -m deepsem.cli``; PYTHONPATH picks the code) under a
memory cap (RLIMIT_AS, 4 GB by default, so a memory bomb is a failed case, not a crashed machine) and a
timeout. ``--mode fork`` (the default) imports deepsem and torch once and forks a child per case that runs the
CLI's ``main`` exactly as the console script does (its own process, stdio, exit code, rlimit); ``--mode
subprocess`` starts a fresh interpreter per case (about 3 s more per case). The HTTP probes always talk to a
real ``deepsem serve`` process on 127.0.0.1 over raw sockets.

How each case's outcome is decided (first match wins):

- code executed: a crafted file carries a pickle payload that touches a marker file; the marker exists.
- data lost: the case's own check of what must survive failed (the user's folders beside an index, the old model
  directory when a new training is refused, the documents of concurrent writers, the index after a kill).
- hang: the command did not finish within its timeout (30 s; 10 s for a FIFO), or an HTTP request got no answer
  before its deadline, or the server still held a connection it should have dropped (slow body).
- traceback: "Traceback (most recent call last)" in stdout/stderr; for HTTP a 5xx answer or a connection reset
  / closed without an answer.
- silent wrong: exit code 0 but the result is wrong, by the case's own check against what the input holds
  (rows read, labels, ids, finite vectors, the ids a search returns) or because the input has no valid reading
  at all (a FIFO, an empty training file, label 0.5); for HTTP a 2xx answer to a request that must be refused.
- unbounded: (HTTP) the server read a 50 MB body before refusing it, or answered a small request with a huge
  error body (> 1 MB), or kept stalled connections open.
- clear error: exit code != 0 and the last stderr line starts with ``error:`` and names the case's file, option
  or field (a click usage error that names the option counts too); for HTTP a 4xx with a JSON body.
- unclear error: any other failure (exit != 0 without such a line, killed by a signal, a 4xx without JSON).
- ok: exit 0 and the case's check of the result passed; for HTTP a 2xx where one is right.

Cases that need an option today's code lacks (``--api-key``) are marked ``needs-feature`` and keep the
outcome they get. The JSON written to ``--out`` has every case: kind, name, command, outcome, reason, exit code,
seconds and the last stderr line.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from misuse_cases import crafted, files

FAMILY_KINDS = {"bad": "bad input files", "kills": "kills", "crafted": "crafted files", "http": "HTTP probes"}
NOTE_PREFIXES = {"bad": ("harness error in bad",), "crafted": ("harness error in crafted",),
                 "kills": ("kill", "harness error in kills"),
                 "http": ("HTTP", "OpenAPI", "load test", "harness error in http")}
KINDS = ("bad input files", "kills", "crafted files", "HTTP probes", "OpenAPI fuzzer", "load test")
OUTCOMES = ("clear error", "ok", "unclear error", "traceback", "hang", "unbounded", "data lost", "silent wrong",
            "code executed")
TINY = ["--hidden", "8", "--embedding-dim", "8", "--dim", "8", "--epochs", "1", "--batch-size", "16",
        "--threads", "1", "--no-progress"]
TRACEBACK = "Traceback (most recent call last)"


# -- running one command -------------------------------------------------------------------------------------
@dataclass
class Run:
    rc: int | None
    out: str
    err: str
    seconds: float
    timed_out: bool = False

    @property
    def text(self) -> str:
        return self.out + "\n" + self.err

    @property
    def last_err(self) -> str:
        lines = [line.strip() for line in self.err.splitlines() if line.strip()]
        return lines[-1] if lines else ""


class Proc:
    """A started command: a forked child running the CLI, or a subprocess."""

    def __init__(self, pid: int, out: Path, err: Path, timeout: float, popen: subprocess.Popen | None = None):
        self.pid, self.out, self.err, self.popen = pid, out, err, popen
        self.start = time.perf_counter()
        self.deadline = self.start + timeout
        self.status: int | None = None
        self.timed_out = False

    def poll(self) -> bool:
        """True once finished (or killed at its deadline)."""
        if self.status is not None:
            return True
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid:
            self.status = os.waitstatus_to_exitcode(status)
            return True
        if time.perf_counter() > self.deadline:
            self.timed_out = True
            self.kill()
            return True
        return False

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        if self.status is None:
            _, status = os.waitpid(self.pid, 0)
            self.status = os.waitstatus_to_exitcode(status)

    def wait(self) -> Run:
        while not self.poll():
            time.sleep(0.02)
        return self.result()

    def result(self) -> Run:
        read = lambda p: p.read_bytes()[-200_000:].decode("utf-8", "replace")  # noqa: E731
        return Run(None if self.timed_out else self.status, read(self.out), read(self.err),
                   round(time.perf_counter() - self.start, 2), self.timed_out)


class Runner:
    """Starts ``deepsem ARGS`` in a folder with a memory cap, by fork (deepsem preloaded) or as a subprocess."""

    def __init__(self, mode: str, mem_gb: float, scratch: Path) -> None:
        self.mode, self.mem = mode, int(mem_gb * 1024**3)
        self.scratch = scratch
        self.count = 0
        if mode == "fork":  # imported once here: every forked child inherits them
            import matplotlib
            import torch
            import torch._dynamo  # noqa: F401  (the optimiser's first step imports it: 5 s a case)

            matplotlib.use("Agg")
            import matplotlib.pyplot


    def _files(self) -> tuple[Path, Path]:
        self.count += 1
        return self.scratch / f"{self.count}.out", self.scratch / f"{self.count}.err"

    def _limit(self) -> None:
        resource.setrlimit(resource.RLIMIT_AS, (self.mem, self.mem))

    def start(self, args: list[str], cwd: Path, timeout: float = 30.0, stdin: Path | None = None,
              env: dict[str, str] | None = None, fn: Callable[[], None] | None = None,
              prepare: Callable[[], None] | None = None) -> Proc:
        """Start ``deepsem ARGS`` (or, with ``fn``, a Python function of the harness's own checks) in ``cwd``;
        ``prepare`` runs in the child first (fork mode only: fault injection such as :func:`kill_at_rename`)."""
        out, err = self._files()
        if self.mode == "subprocess" and fn is None:
            cmd = [sys.executable, "-m", "deepsem.cli", *args]
            with open(out, "wb") as fo, open(err, "wb") as fe, open(stdin or os.devnull, "rb") as fi:
                popen = subprocess.Popen(cmd, cwd=cwd, stdin=fi, stdout=fo, stderr=fe, preexec_fn=self._limit,
                                         env={**os.environ, **(env or {})}, start_new_session=True)
            return Proc(popen.pid, out, err, timeout, popen)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                os.setpgid(0, 0)
                self._limit()
                os.chdir(cwd)
                os.environ.update(env or {})
                fi = os.open(stdin or os.devnull, os.O_RDONLY)
                fo = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                fe = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fi, 0)
                os.dup2(fo, 1)
                os.dup2(fe, 2)
                sys.stdin = io.TextIOWrapper(open(0, "rb", closefd=False), encoding="utf-8")  # noqa: SIM115
                sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), encoding="utf-8",  # noqa: SIM115
                                              line_buffering=True)
                sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), encoding="utf-8",  # noqa: SIM115
                                              line_buffering=True)
                sys.argv = ["deepsem", *args]
                if prepare is not None:
                    prepare()
                if fn is not None:
                    fn()
                    code = 0
                else:
                    from deepsem.cli import main

                    main()
                    code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                with contextlib.suppress(BaseException):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        return Proc(pid, out, err, timeout)

    def run(self, args: list[str], cwd: Path, timeout: float = 30.0, **kw: Any) -> Run:
        return self.start(args, cwd, timeout, **kw).wait()


def kill_at_rename(n: int, pattern: str) -> Callable[[], None]:
    """Fault injection: SIGKILL the process itself just before its ``n``-th rename (os.replace / os.rename, which
    every atomic write and version switch ends with) onto a path containing ``pattern`` — a kill between two of
    a checkpoint's files, or before an index's CURRENT switch, which a random delay almost never hits."""

    def prepare() -> None:
        count = [0]
        for name in ("replace", "rename"):
            original = getattr(os, name)

            def wrapped(src: Any, dst: Any, *a: Any, _original: Any = original, **k: Any) -> Any:
                if pattern in str(dst):
                    count[0] += 1
                    if count[0] == n:
                        os.kill(os.getpid(), signal.SIGKILL)
                return _original(src, dst, *a, **k)

            setattr(os, name, wrapped)

    return prepare


# -- cases ---------------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One misuse. ``check(run)`` -> a reason the exit-0 result is wrong, or None; ``exit0_wrong``: an exit 0 is
    wrong whatever the output; ``survive(run)`` -> a reason data was lost, or None; ``names``: what a clear
    error must mention (any of them)."""

    kind: str
    name: str
    args: list[str]
    cwd: Path
    names: list[str]
    timeout: float = 30.0
    stdin: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    check: Callable[[Run], str | None] | None = None
    exit0_wrong: str | None = None
    survive: Callable[[Run], str | None] | None = None
    marker: Path | None = None
    needs_feature: bool = False


@dataclass
class Outcome:
    kind: str
    name: str
    command: str
    outcome: str
    reason: str = ""
    rc: int | None = None
    seconds: float = 0.0
    last_stderr: str = ""
    needs_feature: bool = False


def judge(case: Case, run: Run) -> tuple[str, str]:
    """The outcome of a finished CLI case (see the module docstring)."""
    if case.marker is not None and case.marker.exists():
        return "code executed", f"the payload ran: {case.marker.name} exists"
    if case.survive is not None:
        lost = case.survive(run)
        if lost:
            return "data lost", lost
    if run.timed_out:
        return "hang", f"no exit within {case.timeout:g} s"
    if TRACEBACK in run.text:
        tb = [line for line in run.err.splitlines() if line.strip() and not line[0].isspace()]
        return "traceback", tb[-1][:200] if tb else ""
    if run.rc == 0:
        if case.exit0_wrong:
            return "silent wrong", case.exit0_wrong
        if case.check is not None:
            wrong = case.check(run)
            if wrong:
                return "silent wrong", wrong
        return "ok", ""
    last = run.last_err
    named = any(n.lower() in last.lower() for n in case.names)
    if last.startswith("error:") and named:
        return "clear error", ""
    if "Usage:" in run.err and any(n in run.err for n in case.names):
        return "clear error", "usage error naming the option"
    if run.rc is not None and run.rc < 0:
        return "unclear error", f"killed by signal {-run.rc}"
    if last.startswith("error:"):
        return "unclear error", f"the error line names none of {case.names}"
    return "unclear error", "no 'error:' line"


def run_cases(runner: Runner, cases: list[Case], jobs: int, results: list[Outcome]) -> None:
    """Run ``cases`` (up to ``jobs`` at once) and append their outcomes."""
    pending = list(cases)
    running: list[tuple[Case, Proc]] = []
    while pending or running:
        while pending and len(running) < jobs:
            case = pending.pop(0)
            running.append((case, runner.start(case.args, case.cwd, case.timeout, stdin=case.stdin, env=case.env)))
        for item in list(running):
            case, proc = item
            if proc.poll():
                running.remove(item)
                record(results, case, proc.result())
        time.sleep(0.01)


def record(results: list[Outcome], case: Case, run: Run) -> Outcome:
    try:
        outcome, reason = judge(case, run)
    except Exception as exc:
        outcome, reason = "unclear error", f"harness check failed: {type(exc).__name__}: {exc}"
    result = Outcome(case.kind, case.name, "deepsem " + " ".join(_short(a) for a in case.args), outcome, reason,
                     run.rc, run.seconds, run.last_err[:300], case.needs_feature)
    results.append(result)
    mark = "  " if outcome in ("ok", "clear error") else "!!"
    print(f"{mark} {case.kind:15} {case.name:45} {outcome:13} {reason[:70]}", flush=True)
    return result


def _short(arg: str) -> str:
    return arg if len(arg) <= 80 else arg[:60] + f"...({len(arg)} chars)"


def sha(path: Path) -> str:
    if not path.exists():
        return "missing"
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(path)).encode() + p.read_bytes())
        return h.hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- validators of exit-0 results ---------------------------------------------------------------------------
def index_docs(directory: Path) -> dict[str, str] | None:
    """id -> text of an index's live documents, read from its current version's SQLite store (None: none)."""
    current = directory / "CURRENT"
    if not current.is_file():
        return None
    db_path = directory / current.read_text().strip() / "docs.sqlite"
    if not db_path.is_file():
        return None
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return {i: t for i, t in db.execute("SELECT id, text FROM docs WHERE deleted = 0")}


def validator(target: files.Target, out: Path, expect: int) -> Callable[[Run], str | None]:
    """A check that the command read exactly ``expect`` clean rows of ``target``."""

    def check(run: Run) -> str | None:
        if target.name == "train":
            got = json.loads((out / "config.json").read_text())["train_pairs"]
            return None if got == expect else f"read {got} pairs, the file holds {expect}"
        if target.name == "classify":
            cfg = json.loads((out / "config.json").read_text())
            labels = set(cfg["labels"])
            want = {r[1] for r in target.rows}
            if labels != want:
                return f"labels {sorted(labels)[:6]}, the file's are {sorted(want)}"
            got = cfg["train_examples"]
            return None if got == expect else f"read {got} texts, the file holds {expect}"
        if target.name == "index":
            docs = index_docs(out)
            if docs is None:
                return "exit 0 but no index was written"
            want = {r[0]: r[1] for r in target.rows}
            if len(docs) != expect:
                return f"{len(docs)} documents, the file holds {expect}"
            bad = [i for i in docs if i not in want]
            if expect and bad:
                return f"ids not in the file: {bad[:3]!r}"
            dirty = [i for i, t in docs.items() if t.endswith("\r") or "\ufeff" in t + i]
            return f"texts keep a CR or a BOM: {dirty[:3]!r}" if dirty else None
        if target.name == "encode":
            import numpy as np

            vectors = np.load(out)
            if vectors.shape[0] != expect:
                return f"{vectors.shape[0]} vectors for {expect} lines"
            return None if np.isfinite(vectors).all() else "non-finite vectors"
        if target.name == "recommend":
            cfg = json.loads((out / "config.json").read_text())
            users = {r[0] for r in target.rows}
            if cfg.get("users") != len(users):
                return f"{cfg.get('users')} users, the file holds {len(users)}"
            return None
        raise ValueError(target.name)

    return check


def finite_weights(model: Path) -> Callable[[Run], str | None]:
    def check(run: Run) -> str | None:
        import numpy as np
        from safetensors.numpy import load_file

        bad = [k for k, v in load_file(str(model / "model.safetensors")).items() if not np.isfinite(v).all()]
        return f"training finished with non-finite weights ({bad[0]})" if bad else None
    return check


# -- the families ----------------------------------------------------------------------------------------------
class Harness:
    def __init__(self, runner: Runner, work: Path, data_dir: Path, jobs: int) -> None:
        self.runner, self.work, self.data_dir, self.jobs = runner, work, data_dir, jobs
        self.results: list[Outcome] = []
        self.notes: dict[str, Any] = {}
        self._model: Path | None = None
        self._index: Path | None = None
        self.targets = files.targets()
        (work / "fixtures").mkdir(parents=True, exist_ok=True)

    # fixtures ----------------------------------------------------------------------------------------------
    def texts(self, n: int, seed: int) -> list[str]:
        """``n`` short texts: BQ questions when the data set is there, else generated ones."""
        bq = self.data_dir / "bq" / "train.tsv"
        if bq.is_file():
            with open(bq, encoding="utf-8") as fh:
                lines = [line.split("\t")[0] for _, line in zip(range(n * 2 + 4000), fh, strict=False)]
            lines = sorted({t for t in lines if t.strip()})
            random.Random(seed).shuffle(lines)
            if len(lines) >= n:
                return lines[:n]
        rng = random.Random(seed)
        return [files.text(rng) + str(i) for i in range(n)]

    def pairs_file(self, name: str, n: int, seed: int) -> Path:
        path = self.work / "fixtures" / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            a, b = self.texts(n, seed), self.texts(n, seed + 1)
            path.write_text("".join(f"{x}\t{y}\t{i % 2}\n" for i, (x, y) in enumerate(zip(a, b, strict=True))),
                            encoding="utf-8")
        return path

    def corpus_file(self, name: str, n: int, seed: int, prefix: str = "d") -> Path:
        path = self.work / "fixtures" / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps({"id": f"{prefix}{i}", "text": t}, ensure_ascii=False) + "\n"
                                    for i, t in enumerate(self.texts(n, seed))), encoding="utf-8")
        return path

    def fixture_run(self, args: list[str], what: str) -> None:
        run = self.runner.run(args, self.work, timeout=300)
        if run.rc != 0:
            raise RuntimeError(f"could not make the {what} fixture: {run.last_err}\n{run.err[-2000:]}")

    @property
    def model(self) -> Path:
        """A tiny two-tower model trained on 200 pairs (with its training/checkpoint)."""
        if self._model is None:
            self._model = self.work / "fixtures" / "model"
            self.fixture_run(["train", str(self.pairs_file("pairs.tsv", 200, 1)), "--out", str(self._model),
                              *TINY], "model")
        return self._model

    @property
    def index(self) -> Path:
        """A Flat index of 100 documents (ids d0..d99) built with :attr:`model`."""
        if self._index is None:
            self._index = self.work / "fixtures" / "index"
            self.fixture_run(["index", "build", "--model", str(self.model), "--corpus",
                              str(self.corpus_file("docs.jsonl", 100, 2)), "--index", str(self._index)], "index")
        return self._index

    def case_dir(self, kind: str, name: str) -> Path:
        d = self.work / kind.replace(" ", "_") / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    # bad input files ---------------------------------------------------------------------------------------
    def bad_inputs(self) -> None:
        """Every variant of :mod:`misuse_cases.files` through the five reading commands, plus option misuse."""
        kind = "bad input files"
        cases: list[Case] = []
        for target in self.targets.values():
            for v in files.variants(target):
                d = self.case_dir(kind, f"{target.name}-{v.name}")
                path = Path(v.filename) if v.special == "devzero" else d / v.filename
                if v.special == "fifo":
                    os.mkfifo(path)
                elif v.special == "dir":
                    path.mkdir()
                    (path / "rows.tsv").write_text(target.tsv(), encoding="utf-8")
                elif v.content is not None:
                    path.write_bytes(v.content)
                out = d / ("vectors.npy" if target.name == "encode" else "out")
                args = self.read_command(target.name, path, out) + v.args
                check = validator(target, out, v.expect) if v.expect is not None else None
                cases.append(Case(kind, f"{target.name}: {v.name}", args, d, [path.name],
                                  timeout=10.0 if v.special == "fifo" else 30.0, check=check,
                                  exit0_wrong=None if v.expect is not None else v.why))
        cases += self.option_cases(kind)
        run_cases(self.runner, cases, self.jobs, self.results)

    def read_command(self, target: str, path: Path, out: Path) -> list[str]:
        if target == "train":
            return ["train", str(path), "--out", str(out), *TINY]
        if target == "classify":
            return ["classify", "train", str(path), "--out", str(out), *TINY]
        if target == "index":
            return ["index", "build", "--model", str(self.model), "--corpus", str(path), "--index", str(out)]
        if target == "encode":
            return ["encode", "--model", str(self.model), "--out", str(out), str(path)]
        if target == "recommend":
            return ["recommend", "train", str(path), "--columns", "user,item,time", "--out", str(out),
                    "--hidden", "8", "--embedding-dim", "8", "--dim", "8", "--epochs", "1", "--threads", "1",
                    "--no-progress"]
        raise ValueError(target)

    def option_cases(self, kind: str) -> list[Case]:
        """Options misused: directories and missing files as --dev, outputs that are files or folders, bad
        numbers, duplicate ids in one add, empty queries."""
        d = self.case_dir(kind, "options")
        pairs = str(self.pairs_file("pairs.tsv", 200, 1))
        texts = d / "texts.txt"
        texts.write_text("怎么还款\n信用卡\n", encoding="utf-8")
        a_file = d / "a_file.txt"
        a_file.write_text("keep me\n")
        a_folder = d / "a_folder"
        a_folder.mkdir(exist_ok=True)
        dup = d / "dup_ids.jsonl"
        dup.write_text('{"id": "n1", "text": "新的"}\n{"id": "n1", "text": "又一个"}\n', encoding="utf-8")
        ix = d / "index"
        shutil.copytree(self.index, ix)
        model = str(self.model)
        file_kept = lambda run: None if a_file.read_text() == "keep me\n" else "a_file.txt was overwritten"  # noqa: E731

        def no_dup(run: Run) -> str | None:
            docs = index_docs(ix) or {}
            return "both rows with id n1 accepted" if "n1" in docs else None

        cls = str(self.targets_file("classify"))
        spec = [
            ("train --dev a directory", ["train", pairs, "--out", str(d / "m1"), "--dev", str(a_folder), *TINY],
             ["a_folder"], None, None),
            ("train --dev missing", ["train", pairs, "--out", str(d / "m2"), "--dev", str(d / "nope.tsv"), *TINY],
             ["nope.tsv"], None, None),
            ("train --out an existing file", ["train", pairs, "--out", str(a_file), *TINY], ["a_file.txt"],
             "--out is a file", file_kept),
            ("train --batch-size 0", ["train", pairs, "--out", str(d / "m3"), *TINY, "--batch-size", "0"],
             ["batch-size", "batch_size"], "batch size 0 accepted", None),
            ("train --threads -3", ["train", pairs, "--out", str(d / "m4"), *TINY, "--threads", "-3"],
             ["threads"], "threads -3 accepted", None),
            ("classify train --dev a directory", ["classify", "train", cls, "--out", str(d / "c1"), "--dev",
                                                  str(a_folder), "--epochs", "1", "--hidden", "8",
                                                  "--no-progress"], ["a_folder"], None, None),
            ("index build --index an existing file", ["index", "build", "--model", model, "--corpus",
                                                      str(self.corpus_file("docs.jsonl", 100, 2)), "--index",
                                                      str(a_file)], ["a_file.txt"], "--index is a file", file_kept),
            ("encode --out a directory", ["encode", "--model", model, "--out", str(a_folder), str(texts)],
             ["a_folder"], "--out is a directory", None),
            ("encode --side sideways", ["encode", "--model", model, "--out", str(d / "v.npy"), "--side",
                                        "sideways", str(texts)], ["side", "sideways"], "--side sideways accepted",
             None),
            ("encode --batch-size 0", ["encode", "--model", model, "--out", str(d / "v0.npy"), "--batch-size", "0",
                                       str(texts)], ["batch-size", "batch_size"], "batch size 0 accepted", None),
            ("index add duplicate ids in one file", ["index", "add", "--index", str(ix), "--corpus", str(dup)],
             ["n1", "dup_ids.jsonl"], None, None),
            ("search an empty query", ["search", "--index", str(self.index), ""], ["query"],
             "an empty query answered", None),
            ("search a whitespace query", ["search", "--index", str(self.index), "   "], ["query"],
             "a whitespace query answered", None),
            ("index build --index missing model", ["index", "build", "--model", str(d / "no_model"), "--corpus",
                                                   str(self.corpus_file("docs.jsonl", 100, 2)), "--index",
                                                   str(d / "ix2")], ["no_model"], "no model", None),
        ]
        out = []
        for name, args, names, wrong, survive in spec:
            check = no_dup if "duplicate" in name else None
            out.append(Case(kind, f"option: {name}", args, d, names, check=check, exit0_wrong=wrong,
                            survive=survive))
        return out

    def targets_file(self, target: str) -> Path:
        path = self.work / "fixtures" / f"{target}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.targets[target].tsv(), encoding="utf-8")
        return path

    # crafted files -------------------------------------------------------------------------------------------
    def crafted_files(self) -> None:
        """Crafted model, checkpoint and index files, index folders beside user folders, re-training."""
        kind = "crafted files"
        cases: list[Case] = []
        texts = self.work / "fixtures" / "texts.txt"
        texts.write_text("怎么还款\n信用卡额度\n", encoding="utf-8")
        import numpy as np

        reference = self.work / "fixtures" / "reference.npy"
        self.fixture_run(["encode", "--model", str(self.model), "--out", str(reference), str(texts)], "vectors")
        want = np.load(reference)

        def same_vectors(path: Path) -> Callable[[Run], str | None]:
            """An exit 0 from a changed model must give the unchanged model's vectors (the change was ignored
            harmlessly, e.g. a file beside it), finite ones at least."""
            def check(run: Run) -> str | None:
                v = np.load(path)
                if v.shape != want.shape:
                    return f"{v.shape} vectors, expected {want.shape}"
                if not np.isfinite(v).all():
                    return "NaN/Inf vectors written"
                if not np.allclose(v, want, atol=1e-5):
                    return "the damaged weights were used: vectors differ from the intact model's"
                return None
            return check

        for name, target, mutate in crafted.model_cases():
            d = self.case_dir(kind, name)
            model = d / "model"
            shutil.copytree(self.model, model, ignore=shutil.ignore_patterns("training"))
            marker = d / "MARKER"
            mutate(model, marker)
            out = d / "vectors.npy"
            cases.append(Case(kind, f"model: {name}", ["encode", "--model", str(model), "--out", str(out),
                                                       str(texts)], d, [target, "model"], check=same_vectors(out),
                              marker=marker))
        pairs = str(self.pairs_file("pairs.tsv", 200, 1))
        for name, target, mutate in crafted.checkpoint_cases():
            d = self.case_dir(kind, name)
            model = d / "model"
            shutil.copytree(self.model, model)
            marker = d / "MARKER"
            mutate(model, marker)
            cases.append(Case(kind, f"checkpoint: {name}", ["train", pairs, "--out", str(model), *TINY], d,
                              [target, "checkpoint"], marker=marker, check=finite_weights(model)))
        known = {f"d{i}" for i in range(100)}
        for name, target, mutate in crafted.index_cases():
            d = self.case_dir(kind, name)
            index = d / "index"
            shutil.copytree(self.index, index)
            marker = d / "MARKER"
            mutate(index, marker)

            def hits_known(run: Run) -> str | None:
                ids = [h["id"] for line in run.out.splitlines() if line.startswith("{")
                       for h in json.loads(line).get("hits", json.loads(line).get("results", []))]
                foreign = [i for i in ids if i not in known]
                if foreign:
                    return f"answered from outside the index: {foreign[:2]}"
                return None if ids else "no hits from an index of 100 documents"

            cases.append(Case(kind, f"index: {name}", ["search", "--index", str(index), "--json", "信用卡还款"], d,
                              [target, "index", "CURRENT"], check=hits_known, marker=marker))
        cases += self.folder_cases(kind)
        run_cases(self.runner, cases, self.jobs, self.results)
        self.retrain_cases(kind)

    def folder_cases(self, kind: str) -> list[Case]:
        """An index built into a folder that holds the user's own v1_photos, v2.0-release, notes."""
        cases = []
        corpus = str(self.corpus_file("docs.jsonl", 100, 2))
        for name, base in (("build into a user's folder", None), ("rebuild beside user folders", self.index)):
            d = self.case_dir(kind, name.replace(" ", "_").replace("'", ""))
            target = d / "folder"
            if base is not None:
                shutil.copytree(base, target)
            target.mkdir(exist_ok=True)
            for sub in ("v1_photos", "v2.0-release", "v000099_mine"):
                (target / sub).mkdir()
                (target / sub / "keep.txt").write_text(f"{sub}\n")
            (target / "notes.txt").write_text("mine\n")
            before = {p: sha(target / p) for p in ("v1_photos", "v2.0-release", "v000099_mine", "notes.txt")}

            def survive(run: Run, target: Path = target, before: dict[str, str] = before) -> str | None:
                lost = [p for p, h in before.items() if sha(target / p) != h]
                return f"the user's {', '.join(lost)} vanished or changed" if lost else None

            cases.append(Case(kind, f"folder: {name}", ["index", "build", "--model", str(self.model), "--corpus",
                                                         corpus, "--index", str(target)], d, ["folder"],
                              survive=survive))
        return cases

    def retrain_cases(self, kind: str) -> None:
        """``deepsem train`` into an --out that holds an earlier run: new data, new --hidden, new --tokenizer
        must not silently resume; the same run may; --no-resume retrains."""
        new_pairs = str(self.pairs_file("pairs_new.tsv", 200, 11))
        old_pairs = str(self.pairs_file("pairs.tsv", 200, 1))
        spec = [
            ("new data", [new_pairs], [], True),
            ("new --hidden", [old_pairs], ["--hidden", "12"], True),
            ("new --tokenizer", [new_pairs], ["--tokenizer", "trigram"], True),
            ("same data and settings", [old_pairs], [], False),
            ("new data --no-resume", [new_pairs], ["--no-resume"], False),
        ]
        for name, data, extra, must_change in spec:
            d = self.case_dir(kind, "retrain-" + name.replace(" ", "_"))
            model = d / "model"
            shutil.copytree(self.model, model)
            backup = d / "before"
            shutil.copytree(self.model, backup)
            args = ["train", *data, "--out", str(model), *TINY, *extra]
            before_w = sha(model / "model.safetensors")

            def check(run: Run, model: Path = model, before_w: str = before_w, must: bool = must_change,
                      extra: list[str] = extra) -> str | None:
                same = sha(model / "model.safetensors") == before_w
                if must and (same or "resumed" in run.text):
                    return "resumed the old run: the weights/tokenizer are the old ones"
                if "--no-resume" in extra and same:
                    return "--no-resume left the old weights"
                return None

            def survive(run: Run, model: Path = model, backup: Path = backup) -> str | None:
                if run.rc != 0 and sha(model) != sha(backup):
                    return "a refused training changed the old model directory"
                return None

            case = Case(kind, f"retrain: {name}", args, d, ["--no-resume", "--out", "resume"], check=check,
                        survive=survive)
            record(self.results, case, self.runner.run(args, d, case.timeout))

    # kills ------------------------------------------------------------------------------------------------------
    def kills(self) -> None:
        """SIGKILL training and every index write at seeded random moments, then check the result."""
        kind = "kills"
        rng = random.Random(2024)
        self.kill_training(kind, rng)
        self.kill_index(kind, rng)
        self.concurrent_writers(kind)

    def kill_training(self, kind: str, rng: random.Random) -> None:
        """Kill ``deepsem train`` / ``classify train`` at random moments; the resumed run must equal an
        uninterrupted one (same weights, bit for bit)."""
        from safetensors.numpy import load_file

        big = str(self.pairs_file("pairs_kill.tsv", 1200, 5))
        dev = str(self.pairs_file("dev_kill.tsv", 40, 6))
        cls = self.work / "fixtures" / "classify_kill.tsv"
        cls.write_text("".join(f"{t}\t{('体育', '财经', '科技')[i % 3]}\n"
                               for i, t in enumerate(self.texts(1200, 7))), encoding="utf-8")
        common = ["--hidden", "16", "--embedding-dim", "16", "--dim", "16", "--threads", "1", "--no-progress",
                  "--batch-size", "32", "--epochs", "2", "--patience", "1000"]  # no early stop: every step runs
        setups = [
            ("train", ["train", big, "--dev", dev, "--eval-every", "5", *common], 4),
            ("train --negatives random", ["train", big, "--dev", dev, "--eval-every", "5", "--negatives", "random",
                                          "--loss", "softmax", *common], 4),
            ("classify train", ["classify", "train", str(cls), "--epochs", "2", "--hidden", "8", "--batch-size",
                                "32", "--threads", "1", "--no-progress"], 3),
        ]
        # the n-th rename into checkpoint/ (in the three-file format of version 0.1.0: before optimizer.pt of
        # checkpoint 1, before trainer_state.json of checkpoints 2 and 3; later formats rename other things)
        points = [(2, "at the 2nd rename into the checkpoint"), (6, "at the 6th rename into the checkpoint"),
                  (9, "at the 9th rename into the checkpoint")]
        for label, args, n_kills in setups:
            ref_dir = self.case_dir(kind, "ref-" + label.replace(" ", "_"))
            t0 = time.perf_counter()
            ref = self.runner.run([*args, "--out", str(ref_dir / "model")], ref_dir, timeout=300)
            took = time.perf_counter() - t0
            if ref.rc != 0:
                self.notes[f"kill {label}"] = f"reference run failed: {ref.last_err}"
                continue
            # the model directory holds the best-on-dev weights; the checkpoint the last ones: compare both
            final = Path("training") / "checkpoint" / "model.safetensors"
            want = {f: load_file(str(ref_dir / "model" / f)) for f in (Path("model.safetensors"), final)}
            precise = points if label.startswith("train") and self.runner.mode == "fork" else []
            for k in range(n_kills + len(precise)):
                d = self.case_dir(kind, f"{label.replace(' ', '_')}-{k}")
                out = d / "model"
                if k < n_kills:
                    delay = rng.uniform(0.1, took * 0.95)
                    case = Case(kind, f"kill {label} at {delay:.2f}s", [*args, "--out", str(out)], d,
                                ["checkpoint", "resume", "--no-resume"])
                    proc = self.runner.start(case.args, d, 300)
                    time.sleep(delay)
                    if proc.poll():
                        self.notes.setdefault("kills finished before the signal", []).append(case.name)
                    proc.kill()
                else:
                    n, where = precise[k - n_kills]
                    case = Case(kind, f"kill {label} {where}", [*args, "--out", str(out)], d,
                                ["checkpoint", "resume", "--no-resume"])
                    first = self.runner.start(case.args, d, 300, prepare=kill_at_rename(n, "checkpoint")).wait()
                    if first.rc != -signal.SIGKILL:
                        self.notes.setdefault("kill points not reached", []).append(f"{case.name}: rc {first.rc}")

                def check(run: Run, out: Path = out, want: dict[Path, Any] = want) -> str | None:
                    for f, ref in want.items():
                        if not (out / f).exists():
                            continue  # a layout without this file (e.g. after a redesign): the other one decides
                        got = load_file(str(out / f))
                        diff = [k for k in ref if k not in got or not (got[k] == ref[k]).all()]
                        if diff:
                            return f"resumed {f} differs from an uninterrupted run's ({len(diff)} tensors)"
                    return None

                case.check = check
                record(self.results, case, self.runner.run(case.args, d, 300))

    def kill_index(self, kind: str, rng: random.Random) -> None:
        """Kill ``index build`` / ``add`` / ``delete`` / ``rebuild``; the index must then load with the old or
        the new documents (or, for a first build, not exist yet)."""
        big = self.corpus_file("docs_big.jsonl", 3000, 8, prefix="b")
        more = self.corpus_file("docs_more.jsonl", 3000, 9, prefix="m")
        base = index_docs(self.index) or {}
        big_ids = {f"b{i}" for i in range(3000)}
        more_ids = set(base) | {f"m{i}" for i in range(3000)}
        deleted = [f"d{i}" for i in range(0, 100, 2)]
        ops = [
            ("index build (new folder)", lambda ix: ["index", "build", "--model", str(self.model), "--corpus",
                                                     str(big), "--index", str(ix)], None, [set(), big_ids], 3),
            ("index build (over an index)", lambda ix: ["index", "build", "--model", str(self.model), "--corpus",
                                                        str(big), "--index", str(ix)], self.index,
             [set(base), big_ids], 3),
            ("index add", lambda ix: ["index", "add", "--index", str(ix), "--corpus", str(more)], self.index,
             [set(base), more_ids], 4),
            ("index delete", lambda ix: ["index", "delete", "--index", str(ix), *deleted], self.index,
             [set(base), set(base) - set(deleted)], 3),
            ("index rebuild", lambda ix: ["index", "rebuild", "--index", str(ix), "--factory", "HNSW32"],
             self.index, [set(base)], 3),
        ]
        for label, make_args, start_from, allowed, n in ops:
            t0 = time.perf_counter()
            probe = self.case_dir(kind, "ref-" + label.split(" (")[0].replace(" ", "_") + str(len(allowed[0])))
            ref_ix = probe / "index"
            if start_from is not None and not ref_ix.exists():
                shutil.copytree(start_from, ref_ix)
            ref = self.runner.run(make_args(ref_ix), probe, 300)
            took = time.perf_counter() - t0
            if ref.rc != 0:
                self.notes[f"kill {label}"] = f"reference run failed: {ref.last_err}"
            # one more over an existing index: a kill just before the CURRENT switch (fault injection)
            precise = 1 if start_from is not None and self.runner.mode == "fork" else 0
            for k in range(n + precise):
                d = self.case_dir(kind, f"{label.replace(' ', '_').replace('(', '').replace(')', '')}-{k}")
                ix = d / "index"
                if start_from is not None:
                    shutil.copytree(start_from, ix)
                if k < n:
                    delay = rng.uniform(0.05, max(0.2, took * 0.95))
                    name = f"kill {label} at {delay:.2f}s"
                    proc = self.runner.start(make_args(ix), d, 300)
                    time.sleep(delay)
                    proc.kill()
                else:
                    name = f"kill {label} before the CURRENT switch"
                    first = self.runner.start(make_args(ix), d, 300, prepare=kill_at_rename(1, "CURRENT")).wait()
                    if first.rc != -signal.SIGKILL:
                        self.notes.setdefault("kill points not reached", []).append(f"{name}: rc {first.rc}")
                # the index must load (through the CLI) with the old or the new documents
                run = self.runner.run(["search", "--index", str(ix), "--json", "-k", "5", "信用卡"], d, 60)

                def survive(run: Run, ix: Path = ix, allowed: list[set[str]] = allowed) -> str | None:
                    if allowed[0] == set() and not (ix / "CURRENT").exists():
                        return None  # a first build killed early: nothing was there, nothing is
                    docs = index_docs(ix)
                    if docs is None:
                        return "no loadable index after the kill"
                    if set(docs) not in allowed:
                        return f"{len(docs)} documents: neither the old nor the new contents"
                    if run.rc != 0:
                        return f"the index no longer loads: {run.last_err[:120]}"
                    return None

                case = Case(kind, name, make_args(ix), d, ["index", "CURRENT"], survive=survive)
                record(self.results, case, run)

    def concurrent_writers(self, kind: str) -> None:
        """2 then 4 ``index add`` at once on one index, each with its own documents: every writer that exits 0
        must find its documents there; the others must fail with a clear error."""
        for n in (2, 4):
            d = self.case_dir(kind, f"writers-{n}")
            ix = d / "index"
            shutil.copytree(self.index, ix)
            corpora = [self.corpus_file(f"writer{n}_{w}.jsonl", 300, 20 + w, prefix=f"w{n}{w}-") for w in range(n)]
            procs = [self.runner.start(["index", "add", "--index", str(ix), "--corpus", str(c)], d, 120)
                     for c in corpora]
            runs = [p.wait() for p in procs]
            docs = index_docs(ix) or {}
            for w, run in enumerate(runs):
                mine = {f"w{n}{w}-{i}" for i in range(300)}

                def survive(run: Run, mine: set[str] = mine, docs: dict[str, str] = docs) -> str | None:
                    if not set(docs) >= {f"d{i}" for i in range(100)}:
                        return "the index's earlier documents are gone"
                    if run.rc == 0 and not mine <= set(docs):
                        return f"exit 0 but {len(mine - set(docs))} of its documents are missing"
                    return None

                case = Case(kind, f"{n} concurrent index add: writer {w}", ["index", "add", "--index", str(ix),
                                                                          "--corpus", str(corpora[w])], d,
                            ["index", "lock", "writer"], survive=survive)
                record(self.results, case, run)

    # HTTP --------------------------------------------------------------------------------------------------------
    def serve(self, index: Path, extra: list[str] | None = None, env: dict[str, str] | None = None
              ) -> tuple[subprocess.Popen | None, int, str]:
        """Start ``deepsem serve`` on a free port; (process or None, port, stderr when it did not start)."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = self.work / f"serve-{port}.log"
        limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (self.runner.mem, self.runner.mem))  # noqa: E731
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "deepsem.cli", "serve", "--index", str(index), "--port",
                                     str(port), *(extra or [])], stdout=fh, stderr=fh, preexec_fn=limit,
                                    env={**os.environ, **(env or {})}, start_new_session=True)
        deadline = time.time() + 90
        while time.time() < deadline:
            if proc.poll() is not None:
                return None, port, log.read_text(errors="replace")
            try:
                status, _, _ = http(port, "GET", "/healthz", timeout=1)
                if status == 200:
                    return proc, port, ""
            except OSError:
                pass
            time.sleep(0.3)
        stop(proc)
        return None, port, "did not answer /healthz in 90 s"

    def http_probes(self) -> None:
        """About 100 requests a careless or hostile client sends, over raw sockets."""
        kind = "HTTP probes"
        ix = self.work / "http" / "index"
        if ix.exists():
            shutil.rmtree(ix)
        shutil.copytree(self.index, ix)
        proc, port, log = self.serve(ix)
        if proc is None:
            self.notes["HTTP probes"] = f"the server did not start: {log[-500:]}"
            return
        try:
            for name, method, path, body, headers, expect in http_cases():
                # the 200k-query body: time to measure its answer's size, not to call it a hang
                self.probe(kind, port, name, method, path, body, headers, expect, 45.0 if "200k" in name else 15.0)
            self.resource_probes(kind, port)
            self.stale_probe(kind, port, ix)
            self.openapi_fuzz(port)
            self.load_test(port, ix)
        finally:
            stop(proc)
        self.auth_probes(kind)

    def probe(self, kind: str, port: int, name: str, method: str, path: str, body: bytes | None,
              headers: dict[str, str] | None, expect: str, timeout: float = 15.0, needs_feature: bool = False,
              ) -> Outcome:
        """``expect``: ok (2xx right), reject (must be refused), limit (must be refused by a size limit: a 2xx
        is unbounded), either."""
        t0 = time.perf_counter()
        try:
            status, resp_headers, data = http(port, method, path, body, headers, timeout)
        except TimeoutError:
            return self.http_record(kind, name, method, path, "hang", f"no answer in {timeout:g} s", None, t0,
                                    needs_feature)
        except (ConnectionError, OSError) as exc:
            return self.http_record(kind, name, method, path, "traceback", f"connection: {type(exc).__name__}",
                                    None, t0, needs_feature)
        is_json = resp_headers.get("content-type", "").startswith("application/json")
        if status >= 500:
            outcome, reason = "traceback", f"{status} {data[:80]!r}"
        elif len(data) > 1_000_000:
            outcome, reason = "unbounded", f"{status} answer of {len(data) / 1e6:.1f} MB"
        elif 200 <= status < 300 and expect == "limit":
            outcome, reason = "unbounded", f"{status}: accepted without a limit"
        elif 200 <= status < 300:
            outcome, reason = ("silent wrong", f"{status}: accepted") if expect == "reject" else ("ok", "")
        elif 400 <= status < 500:
            if expect == "ok":
                outcome, reason = "unclear error", f"{status} for a valid request: {data[:100]!r}"
            elif is_json:
                outcome, reason = "clear error", f"{status}"
            else:
                outcome, reason = "unclear error", f"{status} without a JSON body"
        else:
            outcome, reason = "unclear error", f"status {status}"
        return self.http_record(kind, name, method, path, outcome, reason, status, t0, needs_feature)

    def http_record(self, kind: str, name: str, method: str, path: str, outcome: str, reason: str,
                    status: int | None, t0: float, needs_feature: bool = False) -> Outcome:
        result = Outcome(kind, name, f"{method} {path}", outcome, reason, status,
                         round(time.perf_counter() - t0, 2), "", needs_feature)
        self.results.append(result)
        mark = "  " if outcome in ("ok", "clear error") else "!!"
        print(f"{mark} {kind:15} {name:45} {outcome:13} {reason[:70]}", flush=True)
        return result

    def resource_probes(self, kind: str, port: int) -> None:
        """Huge bodies (with and without Content-Length, chunked), a lying Content-Length, a 1-byte/s body,
        300 stalled connections, many / huge headers."""
        big = 50 * 1024 * 1024
        for name, chunked in (("50 MB body with Content-Length", False), ("50 MB body chunked", True)):
            t0 = time.perf_counter()
            outcome, reason, status = send_big_body(port, big, chunked)
            self.http_record(kind, name, "POST", "/search", outcome, reason, status, t0)
        t0 = time.perf_counter()
        outcome, reason, status = send_big_body(port, big, chunked=False, declared_only=True)
        self.http_record(kind, "Content-Length 50 MB, 10 bytes sent", "POST", "/search", outcome, reason, status, t0)
        t0 = time.perf_counter()
        outcome, reason, status = slow_body(port, seconds=10)
        self.http_record(kind, "1 byte/s body", "POST", "/search", outcome, reason, status, t0)
        t0 = time.perf_counter()
        outcome, reason = stalled_connections(port, 300, wait=10)
        self.http_record(kind, "300 stalled connections", "GET", "/healthz", outcome, reason, None, t0)
        body = json.dumps({"queries": "信用卡"}).encode()
        self.probe(kind, port, "1000 headers", "POST", "/search", body,
                   {**{f"X-H{i}": "v" for i in range(1000)}, "Content-Type": "application/json"}, "limit")
        self.probe(kind, port, "one 1 MB header", "POST", "/search", body,
                   {"X-Big": "v" * 1_000_000, "Content-Type": "application/json"}, "limit")
        self.probe(kind, port, "one 60 kB header", "POST", "/search", body,
                   {"X-Big": "v" * 60_000, "Content-Type": "application/json"}, "either")

    def stale_probe(self, kind: str, port: int, ix: Path) -> None:
        """``index delete`` / ``index add`` while the server runs: a deleted document must not be returned
        (or the service must say it serves a snapshot), a new one must be found."""
        docs = index_docs(ix) or {}
        target_id, target_text = sorted(docs.items())[5]
        body = json.dumps({"queries": target_text, "k": 100}).encode()
        run = self.runner.run(["index", "delete", "--index", str(ix), target_id], ix.parent, 60)
        time.sleep(2.0)
        t0 = time.perf_counter()
        status, _, data = http(port, "POST", "/search", body, {"Content-Type": "application/json"}, 15)
        ids = [h["id"] for r in json.loads(data).get("results", []) for h in r] if status == 200 else []
        if run.rc != 0:
            outcome, reason = "unclear error", f"index delete failed: {run.last_err[:100]}"
        elif target_id in ids:
            outcome, reason = "silent wrong", f"deleted {target_id} still returned by the running server"
        else:
            outcome, reason = "ok", ""
        self.http_record(kind, "deleted document while serving", "POST", "/search", outcome, reason, status, t0)
        new = self.work / "http" / "new.jsonl"
        new.write_text(json.dumps({"id": "fresh1", "text": "一个全新的文档关于火星探测"}, ensure_ascii=False) + "\n",
                       encoding="utf-8")
        run = self.runner.run(["index", "add", "--index", str(ix), "--corpus", str(new)], ix.parent, 60)
        time.sleep(2.0)
        t0 = time.perf_counter()
        body = json.dumps({"queries": "一个全新的文档关于火星探测", "k": 100}).encode()
        status, _, data = http(port, "POST", "/search", body, {"Content-Type": "application/json"}, 15)
        ids = [h["id"] for r in json.loads(data).get("results", []) for h in r] if status == 200 else []
        if run.rc != 0:
            outcome, reason = "unclear error", f"index add failed: {run.last_err[:100]}"
        elif status != 200:
            outcome, reason = "unclear error", f"the search itself was refused ({status})"
        elif "fresh1" not in ids:
            outcome, reason = "silent wrong", "a document added while serving is never found"
        else:
            outcome, reason = "ok", ""
        self.http_record(kind, "added document while serving", "POST", "/search", outcome, reason, status, t0)

    def auth_probes(self, kind: str) -> None:
        """``--api-key`` and ``DEEPSEM_API_KEY``: no key / wrong key / right key (Bearer and X-API-Key), /healthz
        open. Today there is no such option: recorded as needs-feature."""
        body = json.dumps({"queries": "信用卡"}).encode()
        js = {"Content-Type": "application/json"}
        probes = [("no key", js, "reject"), ("wrong key", {**js, "Authorization": "Bearer wrong"}, "reject"),
                  ("right key (Bearer)", {**js, "Authorization": "Bearer s3cret-key"}, "ok"),
                  ("right key (X-API-Key)", {**js, "X-API-Key": "s3cret-key"}, "ok")]
        for how, extra, env in (("--api-key", ["--api-key", "s3cret-key"], None),
                                ("DEEPSEM_API_KEY", [], {"DEEPSEM_API_KEY": "s3cret-key"})):
            proc, port, log = self.serve(self.index, extra, env)
            if proc is None:
                t0 = time.perf_counter()
                clear = "No such option" in log or "no such option" in log.lower()
                outcome = "clear error" if clear and how in log else "unclear error"
                for name, _, _ in probes:
                    self.http_record(kind, f"auth {how}: {name}", "POST", "/search", outcome,
                                     "the server refused to start: " + (log.strip().splitlines() or [""])[-1][:80]
                                     if not clear else f"the server refused to start: no such option {how}",
                                     None, t0, needs_feature=True)
                continue
            try:
                for name, headers, expect in probes:
                    self.probe(kind, port, f"auth {how}: {name}", "POST", "/search", body, headers, expect,
                               needs_feature=True)
                self.probe(kind, port, f"auth {how}: /healthz open", "GET", "/healthz", None, None, "ok",
                           needs_feature=True)
            finally:
                stop(proc)

    # OpenAPI fuzzer and load test ---------------------------------------------------------------------------------
    def openapi_fuzz(self, port: int) -> None:
        """Schemathesis (``--checks all``) against the running service's /openapi.json."""
        exe = Path(sys.executable).parent / "schemathesis"
        if not exe.exists():
            self.notes["OpenAPI fuzzer"] = "schemathesis is not installed: skipped"
            return
        report = self.work / "schemathesis.xml"
        cmd = [str(exe), "run", f"http://127.0.0.1:{port}/openapi.json", "--checks", "all", "--max-examples", "10",
               "--seed", "1", "--no-shrink", "--report", "junit", "--report-junit-path", str(report),
               "--request-timeout", "10", "--max-time", "60"]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, cwd=self.work)
            out = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else str(exc.stdout)
        summary = schemathesis_summary(out, report)
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        summary["command"] = "schemathesis run URL --checks all --max-examples 10 --max-time 60 --seed 1"
        self.notes["OpenAPI fuzzer"] = summary
        print(f"   OpenAPI fuzzer: {json.dumps({k: v for k, v in summary.items() if k != 'output'})[:400]}", flush=True)

    def load_test(self, port: int, index: Path) -> None:
        soak = Path(__file__).resolve().parent / "soak.py"
        if not soak.exists():
            self.notes["load test"] = "bench/soak.py does not exist (yet): skipped"
            return
        # soak.py starts its own `deepsem serve` on the same index (another port) and loads it at concurrency 32
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            soak_port = s.getsockname()[1]
        result = self.work / "soak.json"
        cmd = [sys.executable, str(soak), "--index", str(index), "--duration", "10", "--concurrency", "32",
               "--port", str(soak_port), "--json", str(result)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
            self.notes["load test"] = {"command": " ".join(cmd[1:]), "rc": proc.returncode,
                                       "output": (proc.stdout + proc.stderr)[-1500:]}
            if result.is_file():
                self.notes["load test"]["result"] = json.loads(result.read_text(encoding="utf-8"))
        except subprocess.TimeoutExpired:
            self.notes["load test"] = {"command": " ".join(cmd[1:]), "rc": None, "output": "timed out"}


# -- HTTP helpers ------------------------------------------------------------------------------------------------
def stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def http(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 15.0) -> tuple[int, dict[str, str], bytes]:
    """One request over a raw socket (Connection: close); (status, headers, body). TimeoutError when no
    complete answer came in ``timeout`` seconds; ConnectionError when the server closed without one."""
    deadline = time.monotonic() + timeout
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    if body is not None and "Content-Length" not in (headers or {}):
        head += f"Content-Length: {len(body)}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        # the server may answer and close before reading everything: read what it said
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(head.encode("latin-1") + b"\r\n" + (body or b""))
        data = b""
        while True:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                raise TimeoutError from None
            except ConnectionResetError:
                if data:
                    break
                raise
            if not chunk:
                break
            data += chunk
    if not data:
        raise ConnectionError("closed without an answer")
    return parse_response(data)


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        body = out
    return status, headers, body


def send_big_body(port: int, size: int, chunked: bool, declared_only: bool = False) -> tuple[str, str, int | None]:
    """POST a ``size``-byte body. A server with a body limit answers 413 before it is all sent (clear error);
    one without reads it all first (unbounded). ``declared_only``: claim ``size`` bytes, send 10 and wait:
    the server must answer (413) rather than wait."""
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    head = "POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {size}\r\n\r\n"
    sent = 0
    early = False
    try:
        s.sendall(head.encode())
        if declared_only:
            s.sendall(b'{"queries":')
        else:
            block = b'{"queries": "' + b"a" * (1 << 20)
            while sent < size:
                piece = block[: min(len(block), size - sent)]
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
                s.setblocking(False)
                try:
                    if s.recv(1, socket.MSG_PEEK):
                        early = True
                        break
                except (BlockingIOError, InterruptedError):
                    pass
                finally:
                    s.setblocking(True)
                    s.settimeout(20)
            if chunked and not early:
                s.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        early = True
    data = b""
    try:
        s.settimeout(10 if declared_only else 30)
        while chunk := s.recv(65536):
            data += chunk
    except TimeoutError:
        s.close()
        return "hang", f"no answer within {10 if declared_only else 30} s after {sent} bytes", None
    except ConnectionResetError:
        pass
    s.close()
    if not data:
        return "traceback", f"connection closed without an answer after {sent / 1e6:.1f} MB", None
    status = parse_response(data)[0]
    if status >= 500:
        return "traceback", f"{status} after {sent / 1e6:.1f} MB", status
    if declared_only:
        return ("clear error", f"{status}", status) if 400 <= status < 500 else ("silent wrong", f"{status}", status)
    if early or sent < size:
        return ("clear error", f"{status} after {sent / 1e6:.1f} MB", status)
    return "unbounded", f"{status} only after reading all {size / 1e6:.0f} MB", status


def slow_body(port: int, seconds: float) -> tuple[str, str, int | None]:
    """Declare 100 bytes and send one a second; a server with a body read timeout answers (408/400) or closes
    within ``seconds``; one without keeps waiting."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            s.sendall(b" ")
            s.settimeout(1.0)
            try:
                data = s.recv(65536)
                s.close()
                if not data:
                    return "clear error", f"connection closed after {time.monotonic() - t0:.0f} s", None
                status = parse_response(data)[0]
                return ("clear error" if 400 <= status < 500 else "traceback"), f"{status}", status
            except TimeoutError:
                continue
    except (BrokenPipeError, ConnectionResetError):
        s.close()
        return "clear error", f"connection dropped after {time.monotonic() - t0:.0f} s", None
    s.close()
    return "hang", f"still reading a 1 byte/s body after {seconds:g} s", None


def stalled_connections(port: int, n: int, wait: float) -> tuple[str, str]:
    """Open ``n`` connections that send half a request line and stall; after ``wait`` s the server must still
    answer others and should have dropped (most of) the stalled ones."""
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
    except OSError as exc:
        for s in socks:
            s.close()
        return "unclear error", f"could only open {len(socks)} connections: {exc}"
    time.sleep(wait)
    try:
        status, _, _ = http(port, "GET", "/healthz", timeout=10)
    except (OSError, TimeoutError) as exc:
        status = None
        err = type(exc).__name__
    open_ = 0
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                continue  # closed by the server
            continue
        except (BlockingIOError, InterruptedError):
            open_ += 1
        except OSError:
            continue
        finally:
            s.close()
    if status != 200:
        return "hang", f"the server stopped answering with {n} stalled connections ({err})"
    if open_ > n // 2:
        return "unbounded", f"{open_} of {n} stalled connections still held after {wait:g} s"
    return "ok", f"{open_} of {n} still open"


def http_cases() -> list[tuple[str, str, str, bytes | None, dict[str, str] | None, str]]:
    """(name, method, path, body, headers, expect) for plain request/answer probes."""
    js = {"Content-Type": "application/json"}
    out: list[tuple[str, str, str, bytes | None, dict[str, str] | None, str]] = []

    def search(name: str, raw: str | bytes, expect: str, headers: dict[str, str] | None = None) -> None:
        body = raw.encode() if isinstance(raw, str) else raw
        out.append((f"/search {name}", "POST", "/search", body, headers or js, expect))

    q = '"queries": "信用卡怎么还款"'
    for name, raw in [("queries 1", '{"queries": 1}'), ("queries null", '{"queries": null}'),
                      ("queries true", '{"queries": true}'), ("queries {}", '{"queries": {}}'),
                      ("queries [1]", '{"queries": [1]}'), ("queries [null]", '{"queries": [null]}'),
                      ("queries [[]]", '{"queries": [[]]}'), ('queries ["a", 2]', '{"queries": ["a", 2]}'),
                      ("no queries", '{"k": 3}'), ('k "5"', "{" + q + ', "k": "5"}'),
                      ('k "abc"', "{" + q + ', "k": "abc"}'), ("k 1.5", "{" + q + ', "k": 1.5}'),
                      ("k -1", "{" + q + ', "k": -1}'), ("k 0", "{" + q + ', "k": 0}'),
                      ("k 10^9", "{" + q + ', "k": 1000000000}'),
                      ("k 10^30", "{" + q + ', "k": 1' + "0" * 30 + "}"),
                      ("k true", "{" + q + ', "k": true}'), ("k false", "{" + q + ', "k": false}'),
                      ("k null", "{" + q + ', "k": null}'), ("k 1e400", "{" + q + ', "k": 1e400}'),
                      ("k Infinity", "{" + q + ', "k": Infinity}'), ("k -Infinity", "{" + q + ', "k": -Infinity}'),
                      ("k NaN", "{" + q + ', "k": NaN}'), ("k []", "{" + q + ', "k": []}'),
                      ('filter "x"', "{" + q + ', "filter": "x"}'), ("filter [1]", "{" + q + ', "filter": [1]}'),
                      ("filter nested", "{" + q + ', "filter": {"a": {"b": 1}}}'),
                      ("mode 5", "{" + q + ', "mode": 5}'), ('mode "nope"', "{" + q + ', "mode": "nope"}'),
                      ('mode "lexical" without BM25', "{" + q + ', "mode": "lexical"}'),
                      ('queries ""', '{"queries": ""}'), ('queries "   "', '{"queries": "   "}'),
                      ('queries "\\t\\n"', '{"queries": "\\t\\n"}'), ("queries []", '{"queries": []}'),
                      ('queries ["ok", ""]', '{"queries": ["ok", ""]}'),
                      ("queries NUL", '{"queries": "a\\u0000b"}'),
                      ("queries lone surrogate", '{"queries": "\\ud800"}'),
                      ("200k wrong-typed queries", '{"queries": [' + ",".join(["1"] * 200_000) + "]}"),
                      ("1M-char query", '{"queries": "' + "长" * 1_000_000 + '"}'),
                      ("10k queries", '{"queries": [' + ",".join(['"a"'] * 10_000) + "]}"),
                      ("JSON nested 100000", '{"queries": ' + "[" * 100_000 + "]" * 100_000 + "}"),
                      ("body [] ", "[]"), ("body null", "null"), ("body 1", "1"), ('body "x"', '"x"'),
                      ("body {", "{"), ("body empty", ""), ("body not UTF-8", b'{"queries": "\xff\xfe"}'),
                      ("duplicate keys", '{"queries": "a", "queries": 1}'), ("unknown field", "{" + q + ', "x": 1}')]:
        search(name, raw, "reject" if name not in ("unknown field", "queries lone surrogate", "queries NUL",
                                                    "10k queries", "duplicate keys", 'k "5"') else "either")
    for name, raw in [("valid string", "{" + q + "}"), ("valid list", '{"queries": ["信用卡", "还款", "额度"]}'),
                      ("valid k 1", "{" + q + ', "k": 1}'), ("valid k 100", "{" + q + ', "k": 100}'),
                      ("valid mode dense", "{" + q + ', "mode": "dense"}'),
                      ("valid emoji", '{"queries": "💳 怎么还"}'), ("valid filter", "{" + q + ', "filter": {"a": 1}}')]:
        search(name, raw, "ok")
    search("text/plain content type", "{" + q + "}", "either", {"Content-Type": "text/plain"})
    search("form content type", "queries=x", "reject", {"Content-Type": "application/x-www-form-urlencoded"})
    search("no content type", "{" + q + "}", "either", {})
    out += [
        ("/similarity valid", "POST", "/similarity", '{"pairs": [["信用卡", "还款"]]}'.encode(), js, "ok"),
        ("/similarity one text", "POST", "/similarity", b'{"pairs": [["a"]]}', js, "reject"),
        ("/similarity three texts", "POST", "/similarity", b'{"pairs": [["a", "b", "c"]]}', js, "reject"),
        ("/similarity pairs string", "POST", "/similarity", b'{"pairs": "x"}', js, "reject"),
        ("/similarity empty text", "POST", "/similarity", b'{"pairs": [["", "b"]]}', js, "reject"),
        ("/similarity no pairs", "POST", "/similarity", b'{"pairs": []}', js, "reject"),
        ("/embed valid", "POST", "/embed", '{"texts": ["信用卡"]}'.encode(), js, "ok"),
        ("/embed side sideways", "POST", "/embed", b'{"texts": ["a"], "side": "sideways"}', js, "reject"),
        ("/embed texts []", "POST", "/embed", b'{"texts": []}', js, "reject"),
        ("/embed whitespace", "POST", "/embed", b'{"texts": [" "]}', js, "reject"),
        ("/classify on a search service", "POST", "/classify", b'{"texts": ["a"]}', js, "reject"),
        ("/recommend on a search service", "POST", "/recommend", b'{"history": ["1"]}', js, "reject"),
        ("unknown route", "GET", "/nope", None, None, "reject"),
        ("unknown route POST", "POST", "/admin", b"{}", js, "reject"),
        ("path traversal", "GET", "/../../etc/passwd", None, None, "reject"),
        ("static traversal", "GET", "/static/../../pyproject.toml", None, None, "reject"),
        ("GET /search", "GET", "/search", None, None, "reject"),
        ("DELETE /search", "DELETE", "/search", None, None, "reject"),
        ("PUT /healthz", "PUT", "/healthz", b"{}", js, "reject"),
        ("GET /healthz", "GET", "/healthz", None, None, "ok"),
        ("GET /stats", "GET", "/stats", None, None, "ok"),
        ("GET /openapi.json", "GET", "/openapi.json", None, None, "ok"),
        ("GET / (page)", "GET", "/", None, None, "ok"),
        ("HEAD /healthz", "HEAD", "/healthz", None, None, "either"),
        ("OPTIONS /search", "OPTIONS", "/search", None, None, "either"),
    ]
    return out


def schemathesis_summary(output: str, junit: Path) -> dict[str, Any]:
    """Test cases and failures from Schemathesis' JUnit report (falls back to its text output)."""
    summary: dict[str, Any] = {"output": output[-3000:]}
    if junit.exists():
        import xml.etree.ElementTree as ET

        root = ET.parse(junit).getroot()
        cases = list(root.iter("testcase"))
        failures = []
        for c in cases:
            for f in list(c.iter("failure")) + list(c.iter("error")):
                msg = (f.get("message") or f.text or "").strip().splitlines()
                failures.append(f"{c.get('name')}: {msg[0] if msg else ''}")
        summary.update(operations=len(cases), failures=failures)
    import re

    m = re.search(r"(\d+) generated", output)
    if m:
        summary["test_cases"] = int(m.group(1))
    m = re.search(r"(\d+) unique failures?", output)
    summary["unique_failures"] = int(m.group(1)) if m else 0
    summary["by_check"] = dict(re.findall(r"❌ (ST\d+ [^:\n]+): (\d+)", output))
    return summary


# -- the table -----------------------------------------------------------------------------------------------------
def table(results: list[Outcome], notes: dict[str, Any]) -> str:
    rows = ["| kind | cases | " + " | ".join(OUTCOMES) + " |", "|---|" + "---:|" * (len(OUTCOMES) + 1)]
    total = {o: 0 for o in OUTCOMES}
    for kind in KINDS[:4]:
        mine = [r for r in results if r.kind == kind]
        if not mine:
            continue
        counts = {o: sum(r.outcome == o for r in mine) for o in OUTCOMES}
        for o in OUTCOMES:
            total[o] += counts[o]
        rows.append(f"| {kind} | {len(mine)} | " + " | ".join(str(counts[o]) for o in OUTCOMES) + " |")
    n = sum(total.values())
    rows.append(f"| **all** | **{n}** | " + " | ".join(f"**{total[o]}**" for o in OUTCOMES) + " |")
    lines = ["\n".join(rows), ""]
    fuzz = notes.get("OpenAPI fuzzer")
    if isinstance(fuzz, dict):
        lines.append(f"OpenAPI fuzzer (`{fuzz.get('command', '')}`): {fuzz.get('operations', '?')} operations, "
                     f"{fuzz.get('test_cases', '?')} test cases, {fuzz.get('unique_failures', '?')} unique failures "
                     f"{fuzz.get('by_check', {})}")
        lines += [f"  - {f}" for f in fuzz.get("failures", [])]
    elif fuzz:
        lines.append(f"OpenAPI fuzzer: {fuzz}")
    load = notes.get("load test", "not run")
    lines.append(f"Load test: {load if isinstance(load, str) else json.dumps(load)[:300]}")
    for k, v in notes.items():
        if k not in ("OpenAPI fuzzer", "load test"):
            lines.append(f"Note ({k}): {v}")
    lines += ["", "Cases that are neither a clear error nor ok:", ""]
    for r in results:
        if r.outcome not in ("clear error", "ok"):
            flag = " [needs-feature]" if r.needs_feature else ""
            lines.append(f"- **{r.outcome}**{flag} — {r.kind}: {r.name} — `{r.command[:160]}` — {r.reason[:160]}"
                         + (f" — stderr: `{r.last_stderr[:160]}`" if r.last_stderr else ""))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/misuse.json"))
    parser.add_argument("--only", choices=["bad", "kills", "crafted", "http"], action="append",
                        help="run only these families (repeatable): bad input files, kills, crafted files, "
                        "HTTP probes (with the OpenAPI fuzzer and the load test)")
    parser.add_argument("--jobs", type=int, default=1, help="cases run at once (bad input and crafted files)")
    parser.add_argument("--mode", choices=["fork", "subprocess"], default="fork")
    parser.add_argument("--mem-gb", type=float, default=4.0, help="RLIMIT_AS of every command")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--merge", type=Path, help="an earlier JSON whose cases of the families not run now are "
                        "kept (re-run one family into a full table)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="deepsem-misuse-"))
    scratch = work / "logs"
    scratch.mkdir()
    t0 = time.perf_counter()
    runner = Runner(args.mode, args.mem_gb, scratch)
    h = Harness(runner, work, args.data_dir, max(1, args.jobs))
    only = set(args.only or ["bad", "kills", "crafted", "http"])
    try:
        for key, family in (("bad", h.bad_inputs), ("crafted", h.crafted_files), ("kills", h.kills),
                            ("http", h.http_probes)):
            if key in only:
                t1 = time.perf_counter()
                try:
                    family()
                except Exception:  # a harness bug in one family must not lose the others' results
                    h.notes[f"harness error in {key}"] = traceback.format_exc()[-1500:]
                    traceback.print_exc()
                print(f"== {key}: {time.perf_counter() - t1:.0f} s", flush=True)
    finally:
        if args.merge is not None and args.merge.exists():
            old = json.loads(args.merge.read_text(encoding="utf-8"))
            rerun = {FAMILY_KINDS[k] for k in only}
            kept = [Outcome(**c) for c in old["cases"] if c["kind"] not in rerun]
            h.results = kept + h.results
            prefixes = tuple(p for k in only for p in NOTE_PREFIXES[k])
            h.notes = {**{k: v for k, v in old.get("notes", {}).items() if not k.startswith(prefixes)}, **h.notes}
            only = only | set(old.get("families", []))
        report = table(h.results, h.notes)
        print("\n" + report)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        args.out.write_text(json.dumps({
            "commit": git, "mode": args.mode, "mem_gb": args.mem_gb, "seconds": round(time.perf_counter() - t0),
            "families": sorted(only), "table": report, "notes": h.notes,
            "cases": [asdict(r) for r in h.results]}, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"\n{len(h.results)} cases in {time.perf_counter() - t0:.0f} s -> {args.out}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()
