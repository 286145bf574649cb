"""Subword tokenizer: a WordPiece (default) or BPE vocabulary learnt with Hugging Face ``tokenizers``.

Pipeline: NFKC, invisible characters turned into spaces, lower-case (option); a pre-tokenizer that isolates
each CJK character, splits on whitespace and isolates punctuation; then the WordPiece (``##`` continuation
prefix) or BPE (``</w>`` end-of-word suffix) model. ``[PAD]`` and ``[UNK]`` are the first special tokens, so
they get ids 0 and 1; characters never seen in training become ``[UNK]`` (with WordPiece, the whole word).

Saved as our ``tokenizer.json`` (config) plus the Hugging Face model in ``hf_tokenizer.json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from deepsem.errors import ConfigError, ModelFileMissingError
from deepsem.fileio import MAX_JSON_BYTES, atomic_write_text
from deepsem.text.base import (
    DEFAULT_MAX_LENGTH,
    OptionCheck,
    Tokenizer,
    check_bool,
    check_choice,
    check_optional_int,
    check_text,
)
from deepsem.text.char import CJK_RANGES, IGNORED_RANGES
from deepsem.text.vocab import PAD_ID, SPECIAL_TOKENS, UNK_ID, UNK_TOKEN, check_build_limits

HF_TOKENIZER_FILE = "hf_tokenizer.json"
MODELS = ("wordpiece", "bpe")
#: Vocabulary size asked of the trainer when ``max_size`` is None (a small corpus yields fewer).
DEFAULT_VOCAB_SIZE = 30_000
WORDPIECE_PREFIX = "##"
BPE_SUFFIX = "</w>"

_CJK_SPACE = re.compile(rf"(?<=[{CJK_RANGES}]) (?=[{CJK_RANGES}])")
_HF_MODEL_NAMES = {"wordpiece": "WordPiece", "bpe": "BPE"}


def _new_hf_tokenizer(model: str, lowercase: bool) -> HFTokenizer:
    if model == "wordpiece":
        hf = HFTokenizer(models.WordPiece(unk_token=UNK_TOKEN, continuing_subword_prefix=WORDPIECE_PREFIX))
        hf.decoder = decoders.WordPiece(prefix=WORDPIECE_PREFIX)
    else:
        hf = HFTokenizer(models.BPE(unk_token=UNK_TOKEN, end_of_word_suffix=BPE_SUFFIX))
        hf.decoder = decoders.BPEDecoder(suffix=BPE_SUFFIX)
    steps = [normalizers.NFKC(), normalizers.Replace(Regex(f"[{IGNORED_RANGES}]"), " ")]
    if lowercase:
        steps.append(normalizers.Lowercase())
    hf.normalizer = normalizers.Sequence(steps)
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(f"[{CJK_RANGES}]"), behavior="isolated"),
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    return hf


class SubwordTokenizer(Tokenizer):
    """WordPiece / BPE subwords over CJK-isolated, whitespace- and punctuation-split text."""

    name: ClassVar[str] = "subword"
    OPTIONS: ClassVar[dict[str, OptionCheck]] = {"model": check_choice(*MODELS), "lowercase": check_bool}

    def __init__(
        self,
        hf_tokenizer: HFTokenizer,
        *,
        max_length: int | None = DEFAULT_MAX_LENGTH,
        model: str = "wordpiece",
        lowercase: bool = True,
    ) -> None:
        super().__init__(max_length=max_length)
        check_choice(*MODELS)("model", model)
        check_bool("lowercase", lowercase)
        for token_id, token in enumerate(SPECIAL_TOKENS):
            if hf_tokenizer.id_to_token(token_id) != token:
                raise ValueError(f"the Hugging Face vocabulary must have {token!r} at id {token_id}")
        self.hf_tokenizer = hf_tokenizer
        self.model = model
        self.lowercase = lowercase

    def _options(self) -> dict[str, Any]:
        return {"model": self.model, "lowercase": self.lowercase}

    @classmethod
    def build(  # type: ignore[override]  # its options by name: an unknown one stays a TypeError
        cls,
        texts: Iterable[str],
        *,
        min_count: int = 1,
        max_size: int | None = None,
        max_length: int | None = DEFAULT_MAX_LENGTH,
        model: str = "wordpiece",
        lowercase: bool = True,
        limit_alphabet: int | None = None,
    ) -> Self:
        """Train on ``texts``; ``max_size`` is the trainer's target vocabulary size (default 30 000).

        As in Hugging Face ``tokenizers``, ``min_count`` applies to merges: every character of the corpus
        stays in the alphabet unless ``limit_alphabet`` keeps only that many of the most frequent ones, so
        the vocabulary can exceed ``max_size`` on a tiny corpus with many distinct characters.
        """
        check_build_limits(min_count, max_size)
        check_choice(*MODELS)("model", model)
        check_bool("lowercase", lowercase)
        check_optional_int(1)("limit_alphabet", limit_alphabet)
        hf = _new_hf_tokenizer(model, lowercase)
        vocab_size = DEFAULT_VOCAB_SIZE if max_size is None else max_size
        trainer_options: dict[str, Any] = {
            "vocab_size": vocab_size,
            "min_frequency": min_count,
            "special_tokens": list(SPECIAL_TOKENS),
            "show_progress": False,
        }
        if limit_alphabet is not None:
            trainer_options["limit_alphabet"] = limit_alphabet
        trainer: trainers.Trainer
        if model == "wordpiece":
            trainer = trainers.WordPieceTrainer(continuing_subword_prefix=WORDPIECE_PREFIX, **trainer_options)
        else:
            trainer = trainers.BpeTrainer(end_of_word_suffix=BPE_SUFFIX, **trainer_options)

        def checked() -> Iterator[str]:
            for text in texts:
                yield check_text(text)

        hf.train_from_iterator(checked(), trainer=trainer)
        tokenizer = cls(hf, max_length=max_length, model=model, lowercase=lowercase)
        tokenizer.build_info = {
            "min_count": min_count,
            "max_size": max_size,
            "limit_alphabet": limit_alphabet,
        }
        return tokenizer

    # -------------------------------------------------------------- encoding
    @property
    def vocab_size(self) -> int:
        return self.hf_tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int:
        token_id = self.hf_tokenizer.token_to_id(token)
        return UNK_ID if token_id is None else token_id

    def id_to_token(self, token_id: int) -> str:
        token = self.hf_tokenizer.id_to_token(token_id) if token_id >= 0 else None
        if token is None:
            raise IndexError(f"token id {token_id} out of range [0, {self.vocab_size})")
        return token

    def tokenize(self, text: str) -> list[str]:
        return self.hf_tokenizer.encode(check_text(text), add_special_tokens=False).tokens

    def _encode_untruncated(self, text: str) -> list[int]:
        return self.hf_tokenizer.encode(check_text(text), add_special_tokens=False).ids

    def to_hf(self) -> HFTokenizer:
        """The Hugging Face tokenizer with deepsem's truncation (``max_length``): the same ids, except that an
        empty text gives none where deepsem gives ``[UNK]``."""
        hf = HFTokenizer.from_str(self.hf_tokenizer.to_str())
        if self.max_length is not None:
            hf.enable_truncation(self.max_length)
        return hf

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        batch = [check_text(t) for t in texts]
        return [self._finish(e.ids) for e in self.hf_tokenizer.encode_batch(batch, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text back from ids: ``[PAD]`` dropped, ``[UNK]`` shown, no spaces between CJK characters.

        The text is the normalised one (NFKC, lower-cased if ``lowercase``), with single spaces between words.
        """
        text = self.hf_tokenizer.decode([i for i in ids if i != PAD_ID], skip_special_tokens=False)
        return _CJK_SPACE.sub("", text)

    # -------------------------------------------------------------- files
    def _payload(self, directory: Path) -> dict[str, Any]:
        atomic_write_text(directory / HF_TOKENIZER_FILE, self.hf_tokenizer.to_str(pretty=True))
        return {"hf_tokenizer": HF_TOKENIZER_FILE}

    @classmethod
    def _from_payload(
        cls, payload: dict[str, Any], kwargs: dict[str, Any], directory: Path, source: str
    ) -> Self:
        if payload.get("hf_tokenizer") != HF_TOKENIZER_FILE:
            raise ConfigError(f"{source}: field 'hf_tokenizer' must be {HF_TOKENIZER_FILE!r}")
        hf_path = directory / HF_TOKENIZER_FILE
        if not hf_path.exists():
            raise ModelFileMissingError(f"{source}: its companion file {hf_path} is missing")
        if not hf_path.is_file() or hf_path.stat().st_size > MAX_JSON_BYTES:
            raise ConfigError(f"{hf_path}: not a regular file of at most {MAX_JSON_BYTES:,} bytes")
        try:
            hf = HFTokenizer.from_str(hf_path.read_text(encoding="utf-8"))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # tokenizers' own exception types, and a Rust panic (a BaseException)
            raise ConfigError(f"{hf_path}: not a valid Hugging Face tokenizer file: {str(exc)[:300]}") from None
        model_type = type(hf.model).__name__
        if model_type != _HF_MODEL_NAMES[kwargs["model"]]:
            raise ConfigError(
                f"{source}: field 'config.model' is {kwargs['model']!r} but {hf_path} holds {model_type}"
            )
        # The text pipeline must be the one deepsem builds: a crafted file could carry any normalizer or
        # pre-tokenizer regex (one that backtracks for minutes on every text).
        expected = json.loads(_new_hf_tokenizer(kwargs["model"], kwargs["lowercase"]).to_str())
        saved = json.loads(hf.to_str())
        for part in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
            if saved.get(part) != expected.get(part):
                raise ConfigError(f"{hf_path}: field {part!r} is not the one deepsem's {kwargs['model']} tokenizer "
                                  f"uses (lowercase={kwargs['lowercase']}); the file was edited or not made by deepsem")
        try:
            return cls(hf, **kwargs)
        except ValueError as exc:
            raise ConfigError(f"{hf_path}: {exc}") from None
