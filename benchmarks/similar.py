"""Similar complaints: the incremental index against the earlier per-query TF-IDF, one process.

    .venv/bin/python benchmarks/similar.py [--complaints 100000] [--queries 200]

Prints the index's build rate and query latency (p50, p99) at the given size, the same queries
scored the public SciPy way (the query's columns copied out of the matrix, then multiplied),
and the earlier way's latency (fitting character TF-IDF over the 2,000 most recent texts for
every query) as the baseline, all measured here in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from machine import percentile
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics.pairwise import cosine_similarity

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services/learning/src"))

from complaints_learning import similarity
from complaints_learning.similarity import SimilarIndex
from complaints_shared.vocabulary import normalise

WORDS = [
    "toaster",
    "torradeira",
    "tostadora",
    "kenyérpirító",
    "broken",
    "avariada",
    "rota",
    "hibás",
    "stopped",
    "heating",
    "aquecer",
    "calentar",
    "melegít",
    "queue",
    "fila",
    "cola",
    "sor",
    "waited",
    "esperei",
    "esperé",
    "vártam",
    "staff",
    "rude",
    "funcionário",
    "grosero",
    "eladó",
    "price",
    "preço",
    "precio",
    "ár",
    "shelf",
    "prateleira",
    "estantería",
    "polc",
    "delivery",
    "entrega",
    "szállítás",
    "late",
    "atrasada",
    "tarde",
    "késett",
    "refund",
    "reembolso",
    "visszatérítés",
    "card",
    "cartão",
    "tarjeta",
    "kártya",
    "fee",
    "comissão",
    "comisión",
    "díj",
    "charged",
    "twice",
    "duas",
    "vezes",
    "dos",
    "veces",
    "kétszer",
    "mouldy",
    "bread",
    "bolor",
    "pão",
    "moho",
    "pan",
    "penészes",
    "kenyér",
    "after",
    "two",
    "days",
    "dois",
    "dias",
    "dos",
    "días",
    "két",
    "nap",
    "store",
    "loja",
    "tienda",
    "bolt",
    "manager",
    "gerente",
    "vezető",
]


def texts(n: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    codes = [f"X-{i}" for i in range(500)]
    return [" ".join([*rng.choice(WORDS, 25), str(rng.choice(codes))]) + "." for _ in range(n)]


def earlier_way(query: str, candidates: list[str]) -> None:
    vectorizer = TfidfVectorizer(
        analyzer="char_wb",
        ngram_range=(3, 5),
        sublinear_tf=True,
        use_idf=False,
        preprocessor=normalise,
    )
    m = vectorizer.fit_transform([query, *candidates])
    cosine_similarity(m[0], m[1:])


def bench(n: int, queries: int) -> dict[str, float]:
    corpus = texts(n)
    asked = texts(queries, seed=2)
    index = SimilarIndex()
    t0 = time.perf_counter()
    batch = 1000
    for start in range(0, n, batch):
        index.apply((f"c{i}", i + 1, corpus[i]) for i in range(start, min(n, start + batch)))
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(200):  # one at a time, as complaints arrive
        index.apply([(f"new{i}", n + i + 1, asked[i % queries])])
    one_by_one = (time.perf_counter() - t0) / 200
    latencies, copied_out = [], []
    in_place = similarity._add_columns
    for q in asked:  # interleaved, so that both ways see the same moments of a noisy machine
        for way, into in ((in_place, latencies), (None, copied_out)):
            similarity._add_columns = way
            t0 = time.perf_counter()
            index.rank(q, limit=50)
            into.append(time.perf_counter() - t0)
    similarity._add_columns = in_place
    recent = corpus[-2000:]
    baseline = []
    for q in asked[: max(5, queries // 20)]:
        t0 = time.perf_counter()
        earlier_way(q, recent)
        baseline.append(time.perf_counter() - t0)
    return {
        "complaints": n,
        "index_build_per_s": n / build,
        "index_add_one_ms": one_by_one * 1000,
        "query_p50_ms": statistics.median(latencies) * 1000,
        "query_p99_ms": percentile(latencies, 99) * 1000,
        "query_columns_copied_out_p50_ms": statistics.median(copied_out) * 1000,
        "query_columns_copied_out_p99_ms": percentile(copied_out, 99) * 1000,
        "earlier_query_at_2000_p50_ms": statistics.median(baseline) * 1000,
    }


def report(figures: dict[str, float]) -> None:
    f = figures
    print(
        f"similar  index of {f['complaints']:,} complaints: built at "
        f"{f['index_build_per_s']:,.0f} texts/s, one more in {f['index_add_one_ms']:.2f} ms"
    )
    print(
        f"similar  query  p50 {f['query_p50_ms']:.1f} ms  p99 {f['query_p99_ms']:.1f} ms "
        f"(searching all {f['complaints']:,})"
    )
    print(
        f"similar  baseline  the query's columns copied out first: p50 "
        f"{f['query_columns_copied_out_p50_ms']:.1f} ms  p99 "
        f"{f['query_columns_copied_out_p99_ms']:.1f} ms  → p99 "
        f"{f['query_columns_copied_out_p99_ms'] / f['query_p99_ms']:.2f}x as long"
    )
    print(
        f"similar  baseline  earlier per-query TF-IDF over 2,000 texts: p50 "
        f"{f['earlier_query_at_2000_p50_ms']:.0f} ms  → the index answers "
        f"{f['earlier_query_at_2000_p50_ms'] / f['query_p50_ms']:.0f}x faster over "
        f"{f['complaints'] / 2000:.0f}x the texts"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--complaints", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = bench(args.complaints, args.queries)
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
