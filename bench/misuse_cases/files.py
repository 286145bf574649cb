"""Bad input files for the five reading commands: each a deterministic variant of a small valid file.

A :class:`Target` describes what one command reads (its columns, whether a header is expected, its rows);
:func:`variants` returns every :class:`Variant` for a target. ``expect`` is the number of rows the command must
have read when it exits 0 (a validator in bench/misuse.py checks it), or None when an exit 0 is itself a silent
wrong result (an empty training file, a label of 0.5, a FIFO ...).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

WORDS = ("信用卡", "还款", "怎么", "借钱", "额度", "提高", "利息", "手机", "银行", "密码", "贷款", "账单", "微信",
         "到账", "取消", "申请", "为什么", "多少", "可以", "今天", "apple", "price", "refund", "card", "limit")
LONG_LINE = 20 * 1024 * 1024


def text(rng: random.Random) -> str:
    return "".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5)))


@dataclass
class Target:
    """What one command reads. ``header``: column names; ``has_header``: the command expects them as the first
    line; ``jsonl_args``: options that name the JSONL keys."""

    name: str
    header: list[str]
    rows: list[list[str]]
    has_header: bool
    jsonl_args: list[str] = field(default_factory=list)
    text_col: int = 0  # the column that holds free text (where bad bytes go)

    def tsv(self, rows: list[list[str]] | None = None, header: bool | None = None, sep: str = "\t",
            newline: str = "\n") -> str:
        rows = self.rows if rows is None else rows
        lines = ([sep.join(self.header)] if (self.has_header if header is None else header) else [])
        lines += [sep.join(r) for r in rows]
        return "".join(line + newline for line in lines)


def targets(seed: int = 13) -> dict[str, Target]:
    rng = random.Random(seed)
    pairs = [[text(rng), text(rng), str(i % 2)] for i in range(40)]
    classes = ("体育", "财经", "科技")
    labelled = [[text(rng), classes[i % 3]] for i in range(40)]
    docs = [[f"d{i}", text(rng)] for i in range(1, 41)]
    lines = [[text(rng)] for _ in range(40)]
    inter = [[f"u{u}", f"i{(u * 3 + i * 7) % 23}", str(1000 + i)] for u in range(1, 7) for i in range(1, 8)]
    return {
        "train": Target("train", ["text_a", "text_b", "label"], pairs, False,
                        ["--columns", "text_a,text_b,label"]),
        "classify": Target("classify", ["text", "label"], labelled, False,
                           ["--text-col", "text", "--label-col", "label"]),
        "index": Target("index", ["id", "text"], docs, True, [], text_col=1),
        "encode": Target("encode", ["text"], lines, False),
        "recommend": Target("recommend", ["user", "item", "time"], inter, True, [], text_col=1),
    }


@dataclass
class Variant:
    """One bad input. ``content`` is written to ``filename``; ``special`` is fifo / dir / missing / devzero."""

    name: str
    filename: str
    content: bytes | None
    expect: int | None
    why: str
    special: str | None = None
    args: list[str] = field(default_factory=list)


def _replace(t: Target, row: int, col: int, value: str) -> list[list[str]]:
    rows = [list(r) for r in t.rows]
    rows[row][col] = value
    return rows


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _parquet_wrong_columns() -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"x": [1, 2, 3]}), buf)
    return buf.getvalue()


def variants(t: Target, seed: int = 13) -> list[Variant]:
    """Every bad-input variant that applies to ``t``."""
    n = len(t.rows)
    tc = t.text_col
    key = len(t.header) - 1 if t.name in ("train", "classify") else 0  # the label, id or user column
    lines_only = t.name == "encode"  # encode reads one text per line: no columns, no JSON
    jsonl_rows = [dict(zip(t.header, r, strict=True)) for r in t.rows]

    def jsonl(rows: list[str]) -> bytes:
        return "".join(line + "\n" for line in rows).encode()

    good_json = [json.dumps(r, ensure_ascii=False) for r in jsonl_rows]
    rng = random.Random(seed)
    out: list[Variant] = [
        Variant("empty", "empty.tsv", b"", 0 if t.name in ("index", "encode") else None,
                "nothing to train on, yet it 'succeeded'"),
        Variant("header-only", "header_only.tsv", ("\t".join(t.header) + "\n").encode(),
                {"index": 0, "encode": 1}.get(t.name), "the header line was taken as data"),
        Variant("bom-utf8", "bom.tsv", t.tsv().encode("utf-8-sig"), n, "a BOM changed the first column"),
        Variant("utf16", "utf16.tsv", t.tsv().encode("utf-16"), n, "UTF-16 read as something else"),
        Variant("latin1", "latin1.tsv", t.tsv(_replace(t, 4, tc, "@@")).encode().replace(b"@@", b"caf\xe9 cr\xe8me"), n,
                "latin-1 bytes"),
        Variant("nul", "nul.tsv", t.tsv(_replace(t, 4, tc, "ab\x00cd")).encode(), n, "a NUL byte in a field"),
        Variant("crlf", "crlf.tsv", t.tsv(newline="\r\n").encode(), n, "CRLF line ends"),
        Variant("lone-cr", "cr.tsv", t.tsv(newline="\r").encode(), n, "old-Mac CR line ends"),
        Variant("extra-column", "extra_column.tsv",
                t.tsv([*t.rows[:4], [*t.rows[4], "extra"], *t.rows[5:]]).encode(), n, "a row with an extra field"),
        Variant("unterminated-quote", "quote.csv",
                t.tsv(_replace(t, 4, tc, '"' + t.rows[4][tc]), sep=",").encode(), n,
                "an unterminated quote swallowed rows"),
        Variant("long-line", "long_line.tsv", t.tsv(_replace(t, 2, tc, "长" * (LONG_LINE // 3))).encode(), n,
                "a 20 MB line"),
        Variant("devzero", "/dev/zero", None, None, "an endless line", special="devzero"),
        Variant("fifo", "fifo.tsv", None, None, "a FIFO", special="fifo"),
        Variant("directory", "folder.tsv", None, None, "a directory", special="dir"),
        Variant("missing", "missing.tsv", None, None, "a missing file", special="missing"),
        Variant("binary", "binary.tsv", rng.randbytes(65536), None, "random bytes"),
        Variant("jsonl-bad-json", "bad.jsonl", jsonl([*good_json[:3], '{"text": "unclosed', *good_json[3:]]),
                None if not lines_only else n + 1, "a line that is not JSON", args=t.jsonl_args),
        Variant("jsonl-non-object", "array.jsonl", jsonl([*good_json[:3], "[1, 2]", '"text"', *good_json[3:]]),
                None if not lines_only else n + 2, "a JSON line that is not an object", args=t.jsonl_args),
        Variant("jsonl-nested", "nested.jsonl", jsonl([*good_json[:3], _nested(100_000), *good_json[3:]]),
                None if not lines_only else n + 1, "a JSON line nested 100,000 deep", args=t.jsonl_args),
        Variant("parquet-wrong-columns", "wrong.parquet", _parquet_wrong_columns(), None,
                "a Parquet file without the columns", args=t.jsonl_args),
        Variant("duplicates", "duplicates.tsv", t.tsv([*t.rows, t.rows[0]]).encode(),
                None if t.name == "index" else n + 1, "a duplicate id was accepted"),
        Variant("empty-field", "empty_field.tsv", t.tsv(_replace(t, 4, key, "")).encode(), None,
                f"an empty {t.header[key]} was accepted"),
    ]
    if not lines_only:
        out += [
            Variant("missing-column", "missing_column.tsv",
                    t.tsv([*t.rows[:4], t.rows[4][:1], *t.rows[5:]]).encode(), None, "a row with a field missing"),
            Variant("header-as-data" if not t.has_header else "no-header", "header.tsv",
                    t.tsv(header=not t.has_header).encode(), n,
                    "the header row was used as data" if not t.has_header else "the first row was used as a header"),
        ]
    if t.name == "train":
        for label in ("2", "-1", "0.5", "abc", "nan", "inf"):
            out.append(Variant(f"label-{label}", f"label_{label}.tsv", t.tsv(_replace(t, 4, 2, label)).encode(),
                               None, f"label {label} silently binarised"))
    if t.name == "recommend":
        for value in ("abc", "nan"):
            out.append(Variant(f"time-{value}", f"time_{value}.tsv", t.tsv(_replace(t, 4, 2, value)).encode(),
                               None, f"time {value} accepted"))
    return out

