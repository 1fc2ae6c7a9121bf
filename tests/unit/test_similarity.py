"""The similar-complaints index: incremental, and ranking as a brute-force comparison would."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from complaints_learning import similarity
from complaints_learning.similarity import SimilarIndex, vectorise

STORIES = {
    "pt": "A torradeira T-100 deixou de aquecer ao fim de dois dias.",
    "es": "La tostadora T-100 dejó de calentar a los dos días.",
    "en": "The T-100 toaster stopped heating after two days.",
    "queue": "I waited forty minutes in the queue at the till.",
    "rude": "The staff member was rude and shouted at me.",
}


def brute_force(query: str, texts: dict[str, str]) -> list[tuple[str, float]]:
    keys = list(texts)
    m = vectorise([query, *texts.values()])
    scores = (m[1:] @ m[0].T).toarray().ravel()
    return [(keys[i], float(scores[i])) for i in np.argsort(-scores)]


def test_the_same_story_in_other_languages_ranks_first():
    index = SimilarIndex()
    index.apply((k, i + 1, t) for i, (k, t) in enumerate(STORIES.items()))
    top = [m.key for m in index.rank("Hibás T-100 kenyérpirító, két nap után nem melegít")]
    assert set(top[:3]) == {"pt", "es", "en"}


@pytest.mark.parametrize("postings", ["added in place", "split between two threads", "copied out"])
def test_increments_rank_as_a_fresh_comparison_of_every_text(monkeypatch, postings):
    monkeypatch.setattr(similarity, "TAIL", 3)  # merge into the posting lists often
    if postings == "copied out":  # the way taken where SciPy lacks the in-place one
        monkeypatch.setattr(similarity, "_add_columns", None)
    threads: list[str] = []
    if postings == "split between two threads":  # every query, even on a one-core machine
        monkeypatch.setattr(similarity, "SPLIT_POSTINGS", 1)
        monkeypatch.setattr(similarity.os, "cpu_count", lambda: 2)
        adding = SimilarIndex._add_postings

        def add_postings(self, out, cols, weights):
            threads.append(threading.current_thread().name)
            adding(self, out, cols, weights)

        monkeypatch.setattr(SimilarIndex, "_add_postings", add_postings)
    rng = np.random.default_rng(7)
    words = ["toaster", "queue", "staff", "rude", "price", "shelf", "broken", "delivery"]
    words += ["late", "refund", "card", "fee"]
    texts = {f"c{i}": " ".join(rng.choice(words, 6)) for i in range(40)}
    index = SimilarIndex()
    for version, (k, t) in enumerate(texts.items(), start=1):
        index.apply([(k, version, t)])
    index.apply([("c3", 100, None), ("c5", 101, "entirely different words here")])
    texts.pop("c3")
    texts["c5"] = "entirely different words here"
    query = "rude staff at the queue, late refund"
    got = [(m.key, m.score) for m in index.rank(query, limit=10, threshold=0.0)]
    expected = brute_force(query, texts)[:10]
    assert [k for k, _ in got] == [k for k, _ in expected] and "c3" not in dict(got)
    assert [s for _, s in got] == pytest.approx([s for _, s in expected], abs=1e-4)
    assert index._main.shape[0] > 30  # most of them were ranked from the posting lists
    if postings == "split between two threads":
        helper = [t for t in threads if t.startswith("similar-score")]
        assert len(threads) == 2 and len(helper) == 1  # half by the thread that asked, half not
    assert len(index) == 39
    index.apply([("c5", 50, "an older version arrives late")])  # ignored: older
    assert index.version_of("c5") == 101


def test_a_text_seen_again_under_a_new_version_is_not_vectorised_again(monkeypatch):
    """A rebuild gives every text a new version: the same text keeps its vector (nothing to
    compute, no dead row), a changed one is replaced."""
    index = SimilarIndex()
    index.apply((k, i + 1, t) for i, (k, t) in enumerate(STORIES.items()))
    before = [(m.key, m.score) for m in index.rank(STORIES["en"], limit=5, threshold=0.0)]
    vectorised: list[str] = []

    def counting(texts: list[str]):  # type: ignore[no-untyped-def]
        vectorised.extend(texts)
        return vectorise(texts)

    monkeypatch.setattr(similarity, "vectorise", counting)
    index.apply((k, 100 + i, t) for i, (k, t) in enumerate(STORIES.items()))
    assert vectorised == []  # every text as it was
    assert len(index._keys) == len(STORIES)  # and no row replaced
    assert index.version_of("en") == 102
    index.apply([("queue", 200, "The queue at the till took an hour.")])
    assert vectorised == ["The queue at the till took an hour."]
    index.apply([("rude", 201, None), ("rude", 202, STORIES["rude"])])  # gone, then back
    assert vectorised[-1] == STORIES["rude"] and len(index) == len(STORIES)
    monkeypatch.setattr(similarity, "vectorise", vectorise)
    after = [(m.key, m.score) for m in index.rank(STORIES["en"], limit=5, threshold=0.0)]
    assert [k for k, _ in after][:3] == [k for k, _ in before][:3]


def test_each_text_is_its_log_scaled_counts_at_unit_length_alone_or_in_a_batch():
    texts = ["", STORIES["pt"], "   ", STORIES["queue"], STORIES["pt"] + " " + STORIES["pt"], ""]
    batch = vectorise(texts)
    assert batch.shape == (len(texts), similarity.FEATURES) and batch.dtype == np.float32
    for i, text in enumerate(texts):
        row = batch[i].toarray().ravel()
        assert np.array_equal(row, vectorise([text]).toarray().ravel())  # as if alone
        counts = similarity._VECTORIZER.transform([text]).toarray().ravel()
        if not counts.any():
            assert not row.any()  # nothing to count: a zero row, not NaN
            continue
        assert np.linalg.norm(row) == pytest.approx(1.0, abs=1e-6)
        expected = np.log1p(counts)
        assert np.allclose(row, expected / np.linalg.norm(expected), atol=1e-6)
    # a text said twice counts each n-gram twice: log-scaled, so not the same vector as once
    assert not np.allclose(batch[1].toarray(), batch[4].toarray())


def test_vectors_are_exactly_the_vectorizers_counts_log_scaled_and_normalised():
    """The vectorizer's steps, made once (``vectorise``), give its very numbers: what the
    public way gives (its transform, then ``normalize``), bit for bit, for every text."""
    from sklearn.preprocessing import normalize

    texts = ["", "   ", "a", *STORIES.values(), "Ég a kenyérpirító!! 12345 — ¿por qué?"]
    public = similarity._VECTORIZER.transform(texts).tocsr().astype(np.float32)
    np.log1p(public.data, out=public.data)
    public = normalize(public, norm="l2", copy=False)
    ours = vectorise(texts)
    assert ours.dtype == public.dtype == np.float32
    assert np.array_equal(ours.indptr, public.indptr)
    assert np.array_equal(ours.indices, public.indices)
    assert np.array_equal(ours.data, public.data)


def test_a_querys_posting_lists_are_added_in_one_call_as_the_matrix_product_would():
    """Columns in any order, empty ones (an n-gram no text has) and neighbours in the matrix
    among them: the scores are the product of the query's columns with their weights."""
    rng = np.random.default_rng(11)
    rows, features = 300, 64
    dense = rng.random((rows, features), dtype=np.float32)
    dense[dense < 0.8] = 0.0  # about a fifth of the entries
    dense[:, [0, 5, 6, 40]] = 0.0  # columns no text has
    index = SimilarIndex()
    index._main = similarity.sp.csc_matrix(dense)
    for cols in ([5, 6, 7, 8], [63, 0, 31, 6, 32, 40, 1], list(range(features)), [40], [0]):
        picked = np.array(cols, dtype=np.int32)
        weights = rng.random(len(cols), dtype=np.float32)
        out = np.zeros(rows, dtype=np.float32)
        index._add_postings(out, picked, weights)
        assert out == pytest.approx(dense[:, cols] @ weights, rel=1e-5, abs=1e-6)
    out = np.ones(rows, dtype=np.float32)
    index._add_postings(out, np.array([], dtype=np.int32), np.array([], dtype=np.float32))
    assert (out == 1.0).all()  # added to, never reset: nothing to add, nothing changed
