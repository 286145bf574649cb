"""SemanticModel.encode_stream (what `deepsem encode` runs): chunked encoding gives the vectors of one encode call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepsem.tasks import load

FIXTURE = Path(__file__).parent.parent / "fixtures" / "model_dirs_v1" / "two_tower"
TEXTS = ["怎么还款", "如何还钱", "借款额度", "hello world", "我爱北京天安门", "good day", "还款", "hi"]


@pytest.mark.parametrize("chunk", [1, 3, 8, 1000])
@pytest.mark.parametrize("side", ["query", "doc"])
def test_chunks_give_the_vectors_of_one_call(chunk: int, side: str) -> None:
    model = load(FIXTURE)
    whole = model.encode(TEXTS, side=side)
    streamed = model.encode_stream(iter(TEXTS), chunk=chunk, batch_size=2, side=side)
    assert streamed.shape == whole.shape and streamed.dtype == np.float32
    np.testing.assert_allclose(streamed, whole, atol=1e-6)


def test_an_empty_stream_and_a_bad_chunk() -> None:
    model = load(FIXTURE)
    assert model.encode_stream(iter([])).shape == (0, model.dim)
    with pytest.raises(ValueError, match="chunk"):
        model.encode_stream(iter(TEXTS), chunk=0)
