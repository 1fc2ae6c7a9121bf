"""Similar complaints across languages: character n-grams and cosine similarity, over an index
kept up to date incrementally.

Character n-grams within word boundaries catch shared stems, product names and numbers across
English, Portuguese, Spanish and Hungarian without a language model or any download.  Term
frequencies are log-scaled and not weighted by inverse document frequency: across languages
the strongest shared signal is what every version of a story repeats (the product, its code,
cognates), which IDF would discount.  It ranks; it does not translate.

The index hashes n-grams into a fixed space (no vocabulary to refit), so a new text is one
vector appended.  Vectors sit in a column-major matrix (a posting list per n-gram): a query
touches only the postings of its own n-grams.  New texts wait in a small row-major tail that
is scanned whole, and are merged into the matrix once the tail is full.  Every method is meant
to run on one worker thread (:class:`SimilarIndex` is not locked), off the event loop.

A query's cost is the length of its n-grams' posting lists (about a tenth of all postings for
a typical text), so each posting list is added into the scores where it lies, in one compiled
pass, without first copying the query's columns out of the matrix.  That pass releases the GIL:
a query with many postings (``SPLIT_POSTINGS``) has half of its posting lists added by a second
thread into scores of its own, summed after; it only reads the matrix, while the thread that
asked waits for it, so the index is still never used by two callers at once.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction import FeatureHasher
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.utils.sparsefuncs_fast import inplace_csr_row_normalize_l2

from complaints_shared.vocabulary import normalise

try:  # y += A @ x for a CSC matrix; given one column's slice of indptr, adds that column alone
    from scipy.sparse._sparsetools import csc_matvec as _add_columns
except ImportError:  # pragma: no cover - a SciPy without it takes the slower public way
    _add_columns = None

FEATURES = 2**20
TAIL = 2048  # texts scanned whole before they are merged into the posting lists
# A query with more postings than this is scored by two threads (on a machine with two cores
# or more); below it, handing half over costs more than it saves.
SPLIT_POSTINGS = 200_000

_VECTORIZER = HashingVectorizer(
    analyzer="char_wb",
    ngram_range=(3, 5),
    n_features=FEATURES,
    alternate_sign=False,
    norm=None,
    preprocessor=normalise,
)
# Its two steps, each made once: the vectorizer's own transform makes a new hasher and checks
# its parameters on every call, and ``normalize`` checks its input: about 0.3 ms of the 0.8
# that vectorising one text took, for the same numbers.
_NGRAMS = _VECTORIZER.build_analyzer()
_HASHER = FeatureHasher(
    n_features=_VECTORIZER.n_features,
    input_type="string",
    alternate_sign=_VECTORIZER.alternate_sign,
    dtype=np.float32,
)


@functools.cache
def _helper() -> ThreadPoolExecutor:
    """The second thread that scores half of a large query's posting lists."""
    return ThreadPoolExecutor(1, thread_name_prefix="similar-score")


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


@dataclass(frozen=True)
class Match:
    key: str
    score: float


def vectorise(texts: list[str]) -> sp.csr_matrix:
    """Unit-length, log-scaled n-gram counts, one row per text (a text without any: zeros):
    ``_VECTORIZER``'s counts, as float32, log-scaled and normalised as ``normalize`` would.

    Scaled in place on the matrix's own values: a product with a diagonal matrix costs time in
    the number of columns (2**20), about 6 ms even for one text."""
    m: sp.csr_matrix = _HASHER.transform(_NGRAMS(text) for text in texts)
    np.log1p(m.data, out=m.data)
    inplace_csr_row_normalize_l2(m)
    return m


class SimilarIndex:
    """Texts by key, searchable by similarity; add, replace and remove one at a time."""

    def __init__(self) -> None:
        self._keys: list[str] = []  # row -> key (None-like "" once removed)
        self._row: dict[str, int] = {}
        self._versions: dict[str, int] = {}
        self._texts: dict[str, bytes] = {}  # key -> digest of its indexed text
        self._main = sp.csc_matrix((0, FEATURES), dtype=np.float32)
        self._tail: list[sp.csr_matrix] = []
        self._tail_matrix: sp.csr_matrix | None = None  # the tail stacked, until it grows
        self._query = np.zeros(FEATURES, dtype=np.float32)  # zero between queries
        self._alive = np.zeros(0, dtype=bool)
        self.version = 0  # the highest text version seen

    def __len__(self) -> int:
        return len(self._row)

    def version_of(self, key: str) -> int | None:
        return self._versions.get(key)

    def apply(self, changes: Iterable[tuple[str, int, str | None]]) -> None:
        """``(key, version, text)``: a new or changed text, or ``None`` when it is gone."""
        new: list[tuple[str, str]] = []
        for key, version, text in changes:
            self.version = max(self.version, version)
            if self._versions.get(key, -1) >= version:
                continue  # seen already
            self._versions[key] = version
            digest = _digest(text) if text else None
            if digest is not None and self._texts.get(key) == digest and key in self._row:
                continue  # the same text again (a replay): its vector stands
            self._remove(key)
            if text:
                assert digest is not None
                self._texts[key] = digest
                new.append((key, text))
        if new:
            self._append([k for k, _ in new], vectorise([t for _, t in new]))

    def _remove(self, key: str) -> None:
        self._texts.pop(key, None)
        row = self._row.pop(key, None)
        if row is not None:
            self._alive[row] = False

    def _append(self, keys: list[str], vectors: sp.csr_matrix) -> None:
        start = len(self._keys)
        self._keys.extend(keys)
        self._row.update({k: start + i for i, k in enumerate(keys)})
        self._alive = np.concatenate([self._alive, np.ones(len(keys), dtype=bool)])
        self._tail.append(vectors)
        self._tail_matrix = None
        if sum(t.shape[0] for t in self._tail) >= TAIL:
            self._merge()

    def _merge(self) -> None:
        if self._tail:
            self._main = sp.vstack([self._main, *self._tail], format="csc", dtype=np.float32)
            self._tail = []
            self._tail_matrix = None

    def _score_main(self, out: np.ndarray, cols: np.ndarray, weights: np.ndarray) -> None:
        """``out += main[:, cols] @ weights``."""
        main = self._main
        ptr, rows = main.indptr, main.indices
        if _add_columns is None or ptr.dtype != rows.dtype:
            out += main[:, cols] @ weights
            return
        reach = np.cumsum(ptr[cols + 1] - ptr[cols])  # postings up to each column
        if not len(reach) or reach[-1] < SPLIT_POSTINGS or (os.cpu_count() or 1) < 2:
            self._add_postings(out, cols, weights)
            return
        cut = int(np.searchsorted(reach, reach[-1] // 2)) + 1  # about half the postings
        theirs = np.zeros_like(out)
        done = _helper().submit(self._add_postings, theirs, cols[cut:], weights[cut:])
        try:
            self._add_postings(out, cols[:cut], weights[:cut])
        finally:
            done.result()  # never left reading the matrix after this returns
        out += theirs

    def _add_postings(self, out: np.ndarray, cols: np.ndarray, weights: np.ndarray) -> None:
        """``out += main[:, cols] @ weights``, each column's posting list where it lies, in one
        call: the kernel is handed the columns' own ranges of the matrix as the columns of a
        matrix of its own, the last-stored first, and between each two a range of weight 0
        that runs backwards (from one column's end to an earlier column's start), so it holds
        no posting.  A query among 100,000 texts took 9.7-9.9 ms at p50 and 13.0-16.5 at p99
        so, against 10.6-11.3 and 16.1-16.5 with a call per column, each with its slice and
        its weight made in Python (``benchmarks/similar.py``, alternating)."""
        if not len(cols):
            return
        main = self._main
        ptr = main.indptr
        starts = ptr[cols]
        order = np.argsort(-starts, kind="stable")
        ranges = np.empty(2 * len(cols), dtype=ptr.dtype)
        ranges[0::2] = starts[order]
        ranges[1::2] = ptr[cols[order] + 1]
        scaled = np.zeros(len(ranges) - 1, dtype=np.float32)
        scaled[0::2] = weights[order]
        _add_columns(len(out), len(scaled), ranges, main.indices, main.data, scaled, out)

    def rank(
        self, query: str, *, limit: int = 5, threshold: float = 0.05, exclude: str | None = None
    ) -> list[Match]:
        """The texts most similar to ``query``, best first, above ``threshold``."""
        if not query.strip() or not self._row:
            return []
        q = vectorise([query])
        cols, weights = q.indices, q.data
        scores = np.zeros(len(self._keys), dtype=np.float32)
        n_main = self._main.shape[0]
        if n_main:
            self._score_main(scores[:n_main], cols, weights)
        if self._tail:
            if self._tail_matrix is None:
                self._tail_matrix = sp.vstack(self._tail, format="csr")
            self._query[cols] = weights
            try:
                scores[n_main:] = self._tail_matrix @ self._query
            finally:
                self._query[cols] = 0.0
        scores[~self._alive] = 0.0
        if exclude is not None and exclude in self._row:
            scores[self._row[exclude]] = 0.0
        k = min(limit, len(scores))
        top = np.argpartition(scores, len(scores) - k)[-k:]
        top = top[np.argsort(-scores[top])]
        return [
            Match(self._keys[i], round(float(scores[i]), 4)) for i in top if scores[i] >= threshold
        ]
