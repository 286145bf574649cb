"""The OpenAPI contract, fuzzed with Schemathesis: every published route of a search, a classify and a recommend
service, positive and negative cases, all default checks (status codes and bodies as published, no 5xx,
schema-valid data accepted, invalid data refused). Bounded: few examples per operation, derandomized."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import ignored_auth

from deepsem.data.interactions import Interactions, ItemFeatures
from deepsem.index import Document, Index
from deepsem.serve import Limits, create_app
from deepsem.tasks.classification import Classifier, train_classifier
from deepsem.tasks.recommendation import Recommender, train_recommender

TEXTS = ["银行卡账户余额", "还款利息逾期", "火车站车票", "医院医生看病", "手机电话号码", "天气下雨"]
LIMITS = Limits(max_chars=40, max_texts=4, max_k=8)


def fuzz(app: Any, max_examples: int = 12, headers: dict[str, str] | None = None) -> list[str]:
    """Run every operation of ``app``'s schema (positive and negative data); returns the operations run.

    With ``headers`` (a valid API key) the ``ignored_auth`` check is left out: it adds a made-up Bearer token
    beside the valid X-API-Key and counts the 200 as auth ignored; the key-less run checks it instead."""
    excluded = [ignored_auth] if headers else None
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ran = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=max_examples, derandomize=True, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: Any) -> None:
                case.call_and_validate(headers=headers, excluded_checks=excluded)

            try:
                check()
            except Unsatisfiable:  # nothing to make invalid (no body, no parameters)
                assert mode is GenerationMode.NEGATIVE
        ran.append(f"{operation.method.upper()} {operation.path}")
    return ran


@pytest.fixture(scope="module")
def index(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Index:
    docs = [Document(f"d{i}", t, {"group": i % 2}) for i, t in enumerate(TEXTS)]
    return Index.build(trained_model_dir, docs, tmp_path_factory.mktemp("contract") / "idx", lexical=True)


def test_search_service_keeps_its_contract(index: Index):
    ran = fuzz(create_app(index, limits=LIMITS))
    assert set(ran) == {"GET /healthz", "GET /stats", "POST /search", "POST /admin/reload", "POST /similarity",
                        "POST /embed"}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    d = tmp_path_factory.mktemp("contract-cls")
    rows = [(t[: 3 + i % 4], name) for i, (t, name) in enumerate(zip(TEXTS * 20, ["a", "b", "c"] * 40, strict=True))]
    (d / "train.tsv").write_text("".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    clf, _ = train_classifier(d / "train.tsv", d / "m", tower={"embedding_dim": 8, "hidden_size": 8, "output_dim": 8},
                              training={"epochs": 1, "batch_size": 32, "checkpoint_every": 1000}, progress=False)
    return clf


@pytest.fixture(scope="module")
def recommender(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    rows = [(f"u{u}", f"i{(u + t) % 12}", 1_600_000_000 + 86400 * t, 4.0) for u in range(20) for t in range(6)]
    data = Interactions.from_rows(rows)
    data.item_features = ItemFeatures({f"i{i}": f"film {i}" for i in range(12)}, {f"i{i}": [f"g{i % 3}"]
                                                                                   for i in range(12)})
    data.user_features = {f"u{u}": [f"gender={'FM'[u % 2]}"] for u in range(20)}
    rec, _ = train_recommender(data, tmp_path_factory.mktemp("contract-rec") / "m",
                               config={"embedding_dim": 8, "hidden_size": 8, "output_dim": 8, "max_history": 4},
                               training={"epochs": 1, "batch_size": 16, "checkpoint_every": 1000}, progress=False)
    return rec


def test_classify_service_keeps_its_contract(classifier: Classifier):
    ran = fuzz(create_app(classifier=classifier, limits=LIMITS))
    assert set(ran) == {"GET /healthz", "GET /stats", "POST /classify"}


def test_recommend_service_keeps_its_contract(recommender: Recommender):
    ran = fuzz(create_app(recommender=recommender, limits=LIMITS))
    assert set(ran) == {"GET /healthz", "GET /stats", "POST /recommend"}


def test_keyed_service_keeps_its_contract_with_and_without_the_key(index: Index):
    app = create_app(index, limits=LIMITS, api_key="k3y")
    assert "POST /search" in fuzz(app, max_examples=5, headers={"X-API-Key": "k3y"})
    fuzz(app, max_examples=3)  # no key: 401 everywhere but /healthz, as published
