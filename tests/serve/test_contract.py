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

from deepsem.index import Document, Index
from deepsem.serve import Limits, create_app

TEXTS = ["银行卡账户余额", "还款利息逾期", "火车站车票", "医院医生看病", "手机电话号码", "天气下雨"]
LIMITS = Limits(max_chars=40, max_texts=4, max_k=8)


def fuzz(app: Any, max_examples: int = 12, headers: dict[str, str] | None = None) -> list[str]:
    """Run every operation of ``app``'s schema (positive and negative data); returns the operations run."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ran = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=max_examples, derandomize=True, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: Any) -> None:
                case.call_and_validate(headers=headers)

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
