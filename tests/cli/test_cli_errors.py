"""Errors a user can act on: every failure of the `deepsem` command is one `error:` line naming the file, option
or field and the cause, with exit code 2 (1 for a bug, 130 for Ctrl-C), and never a traceback."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepsem.cli import app
from deepsem.errors import ResumeMismatchError, TrainingDivergedError
from deepsem.progress import progress_enabled

runner = CliRunner()
SRC = Path(__file__).resolve().parents[2] / "src"


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def assert_clean_error(result, code: int = 2, *needles: str) -> str:
    """Exit ``code``, exactly one `error:` line holding every needle, no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = error_lines(result.output)
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def deepsem(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`python -m deepsem ARGS` in a fresh interpreter running this source tree."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    env.pop("DEEPSEM_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "deepsem", *args], capture_output=True, text=True, env=env,
                          input=stdin, timeout=120)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, pair_files) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    (d / "folder").mkdir()
    (d / "a_file").write_text("x\n", encoding="utf-8")
    (d / "texts.txt").write_text("银行卡余额\n天气晴朗\n", encoding="utf-8")
    return {"dir": d / "folder", "file": d / "a_file", "missing": d / "missing.tsv", "texts": d / "texts.txt",
            "pairs": pair_files[0]}


@pytest.fixture(scope="module")
def index_dir(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deepsem.index import Index

    d = tmp_path_factory.mktemp("index")
    corpus = d / "c.jsonl"
    docs = [{"id": "a", "text": "银行卡账户余额"}, {"id": "b", "text": "火车站车票"}, {"id": "c", "text": "医院医生"}]
    corpus.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in docs), encoding="utf-8")
    Index.build(trained_model_dir, corpus, d / "idx")
    return d / "idx"


# -- the entry points -----------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("module", ["deepsem", "deepsem.cli"])
def test_python_m_runs_every_command_group(module, monkeypatch, capsys):
    # `python -m deepsem.cli recommend --help` answered "No such command 'recommend'" (main() ran before the
    # recommend group was added); `python -m deepsem` did not exist. runpy runs the module as `python -m` does.
    import runpy

    monkeypatch.setattr(sys, "argv", [module, "recommend", "--help"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "train" in out and "serve" in out and "No such command" not in out


def test_no_traceback_reaches_stderr_of_a_real_process(files):
    done = deepsem("train", str(files["dir"]), "--out", str(files["dir"].parent / "m"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error:")
    assert "folder" in done.stderr and "is a directory" in done.stderr
    assert done.stdout == ""


def test_console_script_entry_point_is_main():
    import tomllib

    scripts = tomllib.loads((SRC.parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["deepsem"] == "deepsem.cli:main"


# -- files and folders given where the other kind belongs -----------------------------------------------------

@pytest.mark.parametrize("args, option", [
    (["train", "{dir}", "--out", "{tmp}/m"], "data"),
    (["train", "{missing}", "--out", "{tmp}/m"], "data"),
    (["train", "{pairs}", "--dev", "{dir}", "--out", "{tmp}/m"], "--dev"),
    (["train", "{pairs}", "--out", "{file}"], "--out"),
    (["classify", "train", "{dir}", "--out", "{tmp}/m"], "data"),
    (["classify", "evaluate", "--model", "{tmp}", "{dir}"], "data"),
    (["classify", "predict", "--model", "{tmp}", "{dir}"], "texts"),
    (["index", "build", "--model", "{tmp}", "--corpus", "{dir}", "--index", "{tmp}/i"], "--corpus"),
    (["index", "build", "--model", "{tmp}", "--corpus", "{texts}", "--index", "{file}"], "--index"),
    (["index", "add", "--index", "{tmp}", "--corpus", "{missing}"], "--corpus"),
    (["encode", "--model", "{tmp}", "{dir}", "--out", "{tmp}/v.npy"], "texts"),
    (["encode", "--model", "{tmp}", "{texts}", "--out", "{dir}"], "--out"),
    (["search", "--index", "{tmp}", "--queries", "{dir}"], "--queries"),
    (["recommend", "train", "{missing}", "--out", "{tmp}/m"], "data"),
])
def test_a_file_or_folder_of_the_wrong_kind_is_named(args, option, files, tmp_path: Path):
    args = [a.format(tmp=tmp_path, **files) for a in args]
    line = assert_clean_error(runner.invoke(app, args), 2, option)
    path = next(a for a in args if a in (str(files["dir"]), str(files["missing"]), str(files["file"])))
    assert Path(path).name in line
    assert any(why in line for why in ("is a directory", "is a folder", "is a file", "not found"))


# -- option values ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, option", [
    (["train", "{pairs}", "--out", "{tmp}/m", "--batch-size", "0"], "--batch-size"),
    (["train", "{pairs}", "--out", "{tmp}/m", "--threads", "-3"], "--threads"),
    (["train", "{pairs}", "--out", "{tmp}/m", "--epochs", "-1"], "--epochs"),
    (["train", "{pairs}", "--out", "{tmp}/m", "--lr", "0"], "--lr"),
    (["train", "{pairs}", "--out", "{tmp}/m", "--lr", "nan"], "--lr"),
    (["train", "{pairs}", "--out", "{tmp}/m", "--hidden", "0"], "--hidden"),
    (["classify", "train", "{pairs}", "--out", "{tmp}/m", "--threads", "-3"], "--threads"),
    (["recommend", "train", "{pairs}", "--out", "{tmp}/m", "--batch-size", "0"], "--batch-size"),
    (["encode", "--model", "{tmp}", "{texts}", "--out", "{tmp}/v.npy", "--side", "both"], "--side"),
    (["encode", "--model", "{tmp}", "{texts}", "--out", "{tmp}/v.npy", "--batch-size", "0"], "--batch-size"),
    (["search", "--index", "{tmp}", "hello", "-k", "0"], "-k"),
    (["classify", "predict", "--model", "{tmp}", "{texts}", "-k", "0"], "-k"),
    (["serve", "--model", "{tmp}", "--threads", "-3"], "--threads"),
    (["recommend", "evaluate", "--model", "{tmp}", "{pairs}", "--k", "10,x"], "--k"),
])
def test_a_bad_option_value_names_the_option(args, option, files, tmp_path: Path):
    args = [a.format(tmp=tmp_path, **files) for a in args]
    assert_clean_error(runner.invoke(app, args), 2, f"'{option}'")
    assert not (tmp_path / "m").exists()  # refused before any work


def test_a_missing_option_is_one_error_line(files, tmp_path: Path):
    line = assert_clean_error(runner.invoke(app, ["train", str(files["pairs"])]), 2, "--out")
    assert "train --help" in line


def test_an_empty_query_is_refused(index_dir: Path):
    assert_clean_error(runner.invoke(app, ["search", "--index", str(index_dir), ""]), 2, "query 1 is empty")


# -- damaged files and library errors ----------------------------------------------------------------------------

def test_truncated_or_garbage_weights_are_one_line(trained_model_dir: Path, files, tmp_path: Path):
    for name, damage in (("truncated", lambda b: b[:100]), ("garbage", lambda b: os.urandom(len(b)))):
        model = tmp_path / name
        shutil.copytree(trained_model_dir, model)
        weights = model / "model.safetensors"
        weights.write_bytes(damage(weights.read_bytes()))
        result = runner.invoke(app, ["encode", "--model", str(model), str(files["texts"]),
                                     "--out", str(tmp_path / "v.npy")])
        line = assert_clean_error(result, 2)
        assert "weights_only" not in result.output and name in line  # the model folder is named
        assert not (tmp_path / "v.npy").exists()


def test_unreadable_sqlite_or_faiss_files_are_one_line(index_dir: Path, tmp_path: Path):
    for part in ("docs.sqlite", "index.faiss"):
        damaged = tmp_path / part.replace(".", "_")
        shutil.copytree(index_dir, damaged)
        version = (damaged / "CURRENT").read_text().strip()
        (damaged / version / part).write_bytes(b"this is not what it claims to be" * 4)
        result = runner.invoke(app, ["search", "--index", str(damaged), "医院"])
        line = assert_clean_error(result, 2)
        assert damaged.name in line


def test_duplicate_ids_in_one_add_file_are_one_line(index_dir: Path, tmp_path: Path):
    idx = tmp_path / "idx"
    shutil.copytree(index_dir, idx)
    corpus = tmp_path / "dup.jsonl"
    corpus.write_text('{"id": "d1", "text": "天气"}\n{"id": "d1", "text": "下雨"}\n', encoding="utf-8")
    line = assert_clean_error(runner.invoke(app, ["index", "add", "--index", str(idx), "--corpus", str(corpus)]))
    assert "d1" in line or "repeated" in line or "duplicate" in line


def test_training_errors_from_the_trainer_are_one_line(monkeypatch, files, tmp_path: Path):
    import deepsem.tasks.matching

    for exc in (TrainingDivergedError("training diverged at step 12: the loss is NaN; lower --lr or clip"),
                ResumeMismatchError(f"{tmp_path}/m holds a run with other data; use --no-resume or a new --out")):
        def fail(*args, exc=exc, **kwargs):
            raise exc

        monkeypatch.setattr(deepsem.tasks.matching, "train", fail)
        result = runner.invoke(app, ["train", str(files["pairs"]), "--out", str(tmp_path / "m")])
        assert assert_clean_error(result, 2) == f"error: {exc}"


def test_a_damaged_checkpoint_never_suggests_weights_only_false(monkeypatch, files, tmp_path: Path):
    import fractions

    import torch

    import deepsem.tasks.matching

    foreign = tmp_path / "foreign.pt"  # a pickle of a class torch's safe loader refuses
    torch.save({"step": fractions.Fraction(1, 3)}, foreign)
    truncated = tmp_path / "truncated.pt"
    torch.save({"step": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    for damaged in (foreign, truncated):
        monkeypatch.setattr(deepsem.tasks.matching, "train",
                            lambda *args, damaged=damaged, **kwargs: torch.load(damaged, weights_only=True))
        result = runner.invoke(app, ["train", str(files["pairs"]), "--out", str(tmp_path / "m")])
        assert_clean_error(result, 2, "checkpoint", "damaged", "--out")
        assert "weights_only" not in result.output


@pytest.mark.parametrize("raised, expected", [
    (FileNotFoundError("data/train.tsv"), "error: data/train.tsv: no such file or directory"),
    (PermissionError(13, "Permission denied", "/srv/idx"), "error: /srv/idx: permission denied"),
    (IsADirectoryError(21, "Is a directory", "corpus"), "error: corpus: is a directory"),
    (ValueError("bad Faiss factory string 'Flat2'"), "error: bad Faiss factory string 'Flat2'"),
])
def test_os_and_value_errors_say_path_and_cause(monkeypatch, raised, expected, tmp_path: Path):
    import deepsem.index

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(deepsem.index.Index, "load", fail)
    assert assert_clean_error(runner.invoke(app, ["index", "stats", "--index", str(tmp_path)]), 2) == expected


def test_a_bug_is_an_internal_error_and_ctrl_c_is_interrupted(monkeypatch, tmp_path: Path):
    import deepsem.index

    def bug(*args, **kwargs):
        raise KeyError("version")

    monkeypatch.setattr(deepsem.index.Index, "load", bug)
    monkeypatch.delenv("DEEPSEM_DEBUG", raising=False)
    result = runner.invoke(app, ["index", "stats", "--index", str(tmp_path)])
    line = assert_clean_error(result, 1, "internal error: KeyError", "DEEPSEM_DEBUG=1")
    assert "'version'" in line

    monkeypatch.setenv("DEEPSEM_DEBUG", "1")
    result = runner.invoke(app, ["index", "stats", "--index", str(tmp_path)])
    assert result.exit_code == 1 and "Traceback" in result.output and "in bug" in result.output

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.delenv("DEEPSEM_DEBUG")
    monkeypatch.setattr(deepsem.index.Index, "load", interrupted)
    result = runner.invoke(app, ["index", "stats", "--index", str(tmp_path)])
    assert result.exit_code == 130 and result.output.strip() == "interrupted"


def test_encode_names_the_line_that_is_not_utf8(trained_model_dir: Path, tmp_path: Path):
    texts = tmp_path / "t.txt"
    texts.write_bytes("银行\n天气\n".encode() + b"ok \xff\xfe\n" + "医院\n".encode())
    result = runner.invoke(app, ["encode", "--model", str(trained_model_dir), str(texts),
                                 "--out", str(tmp_path / "v.npy")])
    line = assert_clean_error(result, 2, "t.txt, line 3", "not UTF-8")
    assert "position" not in line  # no offset into a decoder's chunk


# -- progress on a terminal only ----------------------------------------------------------------------------------

class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_enabled_follows_the_terminal_unless_told():
    assert progress_enabled(None, _Terminal()) is True
    assert progress_enabled(None, io.StringIO()) is False
    assert progress_enabled(True, io.StringIO()) is True and progress_enabled(False, _Terminal()) is False
    closed = io.StringIO()
    closed.close()
    assert progress_enabled(None, closed) is False


def test_train_commands_pass_progress_auto_and_explain_resume(monkeypatch, files, tmp_path: Path):
    import deepsem.tasks.matching

    seen = {}

    def fake_train(*args, **kwargs):
        seen.update(kwargs)
        raise ResumeMismatchError("stop here")

    monkeypatch.setattr(deepsem.tasks.matching, "train", fake_train)
    runner.invoke(app, ["train", str(files["pairs"]), "--out", str(tmp_path / "m")])
    assert seen["progress"] is None and seen["resume"] is True  # None: the trainer shows a bar on a terminal only
    runner.invoke(app, ["train", str(files["pairs"]), "--out", str(tmp_path / "m"), "--no-progress", "--no-resume"])
    assert seen["progress"] is False and seen["resume"] is False

    import typer.main

    root = typer.main.get_command(app)
    for path in (["train"], ["classify", "train"], ["recommend", "train"]):
        command = root
        for name in path:
            command = command.commands[name]
        params = {p.name: p for p in command.params}
        assert params["resume"].opts == ["--resume"] and params["resume"].secondary_opts == ["--no-resume"]
        assert "--no-resume starts over in this folder" in params["resume"].help
        assert params["progress"].default is None and "terminal" in params["progress"].help


def test_index_build_prints_no_progress_lines_off_a_terminal(trained_model_dir: Path, files, tmp_path: Path):
    result = runner.invoke(app, ["index", "build", "--model", str(trained_model_dir), "--corpus",
                                 str(files["texts"]), "--index", str(tmp_path / "i")])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == [line for line in result.output.strip().splitlines()
                                                  if "/s)" not in line]
    assert "indexed 2 documents with Flat" in result.output
    result = runner.invoke(app, ["index", "build", "--model", str(trained_model_dir), "--corpus",
                                 str(files["texts"]), "--index", str(tmp_path / "j"), "--progress"])
    assert result.exit_code == 0 and "/s)" in result.output


# -- serve --api-key ----------------------------------------------------------------------------------------------

def test_serve_passes_the_api_key_from_option_or_environment(monkeypatch, trained_model_dir: Path):
    import torch

    import deepsem.serve

    calls: list[dict] = []

    def create_app(*args, api_key: str | None = None, **kwargs):
        calls.append({"api_key": api_key})
        return object()

    monkeypatch.setattr(deepsem.serve, "create_app", create_app)
    monkeypatch.setattr(deepsem.serve, "run", lambda *args, **kwargs: None)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.delenv("DEEPSEM_API_KEY", raising=False)
    result = runner.invoke(app, ["serve", "--model", str(trained_model_dir), "--api-key", "s3cret"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["serve", "--model", str(trained_model_dir)], env={"DEEPSEM_API_KEY": "from-env"})
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["serve", "--model", str(trained_model_dir)])
    assert result.exit_code == 0, result.output
    assert calls == [{"api_key": "s3cret"}, {"api_key": "from-env"}, {"api_key": None}]

    # an empty key is refused, never taken as "no key" (the service would start unprotected)
    monkeypatch.setattr(deepsem.serve, "create_app", lambda *args, **kwargs: pytest.fail("started"))
    result = runner.invoke(app, ["serve", "--model", str(trained_model_dir)], env={"DEEPSEM_API_KEY": " "})
    assert_clean_error(result, 2, "--api-key")


def test_serve_guards_reach_the_service(monkeypatch, trained_model_dir: Path):
    """The limit options of `deepsem serve` end up in the app's Limits, and a non-positive one is refused."""
    import torch

    import deepsem.serve

    seen: list = []
    real = deepsem.serve.create_app

    def create_app(*args, **kwargs):
        app_ = real(*args, **kwargs)
        seen.append((app_.state.limits, kwargs.get("reload_interval_s")))
        return app_

    monkeypatch.setattr(deepsem.serve, "create_app", create_app)
    monkeypatch.setattr(deepsem.serve, "run", lambda *args, **kwargs: None)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    result = runner.invoke(app, ["serve", "--model", str(trained_model_dir), "--max-body-bytes", "4096",
                                 "--body-timeout", "2.5", "--max-in-flight", "7", "--max-headers", "30"])
    assert result.exit_code == 0, result.output
    limits, _ = seen[0]
    assert (limits.max_body_bytes, limits.body_timeout_s, limits.max_in_flight, limits.max_headers) == (4096, 2.5, 7,
                                                                                                          30)
    result = runner.invoke(app, ["serve", "--model", str(trained_model_dir), "--max-in-flight", "0"])
    assert_clean_error(result, 2, "--max-in-flight")


def test_encode_refuses_cr_only_line_ends(trained_model_dir: Path, tmp_path: Path):
    """One text per line: a CR-only file would otherwise become one vector for the whole file."""
    texts = tmp_path / "cr.txt"
    texts.write_bytes(b"\r".join(f"text {i}".encode() for i in range(40)) + b"\r")
    result = runner.invoke(app, ["encode", "--model", str(trained_model_dir), "--out", str(tmp_path / "v.npy"),
                                 str(texts)])
    assert_clean_error(result, 2, "cr.txt", "carriage returns")
    assert not (tmp_path / "v.npy").exists()


def test_an_empty_corpus_names_its_file(trained_model_dir: Path, tmp_path: Path):
    corpus = tmp_path / "empty.tsv"
    corpus.write_text("id\ttext\n", encoding="utf-8")
    result = runner.invoke(app, ["index", "build", "--model", str(trained_model_dir), "--corpus", str(corpus),
                                 "--index", str(tmp_path / "idx")])
    assert_clean_error(result, 2, "empty.tsv", "no documents")
