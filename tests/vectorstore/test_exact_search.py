import numpy as np
import pytest

from deepsem.vectorstore.exact import exact_search


@pytest.mark.parametrize("chunk", [7, 1000])
def test_exact_search_equals_a_full_sort(chunk):
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((103, 8)).astype(np.float32)
    queries = rng.standard_normal((5, 8)).astype(np.float32)
    scores, idx = exact_search(queries, docs, k=10, chunk=chunk)
    full = queries @ docs.T
    want = np.argsort(-full, axis=1)[:, :10]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(scores, np.take_along_axis(full, want, 1), rtol=1e-5)


def test_k_larger_than_corpus_and_bad_shapes():
    docs = np.eye(3, dtype=np.float32)
    _, idx = exact_search(docs, docs, k=10)
    assert idx.shape == (3, 3) and (idx[:, 0] == np.arange(3)).all()
    with pytest.raises(ValueError, match="shapes"):
        exact_search(np.zeros((2, 4), np.float32), docs, 1)
