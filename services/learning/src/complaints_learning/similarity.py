"""Similar complaints across languages: character n-gram TF-IDF and cosine similarity.

Character n-grams within word boundaries catch shared stems, product names and numbers across
English, Portuguese, Spanish and Hungarian without a language model or any download.  Term
frequencies are not weighted by inverse document frequency: across languages the strongest
shared signal is what every version of a story repeats (the product, its code, cognates),
which IDF would discount.  It ranks; it does not translate.
"""

from __future__ import annotations

from dataclasses import dataclass

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics.pairwise import cosine_similarity

from complaints_shared.vocabulary import normalise


@dataclass(frozen=True)
class Match:
    key: str
    score: float


def rank(
    query: str, candidates: dict[str, str], *, limit: int = 5, threshold: float = 0.05
) -> list[Match]:
    """The candidates most similar to ``query``, best first, above ``threshold``."""
    if not candidates or not query.strip():
        return []
    keys = list(candidates)
    vectorizer = TfidfVectorizer(
        analyzer="char_wb",
        ngram_range=(3, 5),
        sublinear_tf=True,
        use_idf=False,
        preprocessor=normalise,
    )
    matrix = vectorizer.fit_transform([query, *(candidates[k] for k in keys)])
    scores = cosine_similarity(matrix[0], matrix[1:]).ravel()
    ranked = sorted(zip(keys, scores, strict=True), key=lambda ks: ks[1], reverse=True)
    return [Match(k, round(float(s), 4)) for k, s in ranked[:limit] if s >= threshold]
