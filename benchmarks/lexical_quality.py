"""The lexical half on the sample's questions: BM25 (bm25s) over several kinds of terms against the TF-IDF cosine
faclip used before, and the fusion rules, on both splits.

    python benchmarks/lexical_quality.py            # after `dvc repro` (docstore, questions, index, image vectors)

For each scorer: the question alone (recall@1, recall@5, MRR of its exact passage, train and test split), then the
photo + question together by relative score fusion (min-max, `faclip.vqa.fuse`) at the photo weight that scores
best on the train split (MRR, then recall@1), as `evaluate` chooses it. For the scorer in use, the fusion rules
side by side: the raw weighted sum faclip used before (w·cos + (1 − w)·score), min-max fusion, and weighted
reciprocal-rank fusion (w / (60 + rank) + (1 − w) / (60 + rank)).
"""

import math
import re
import sys
from collections import Counter
from pathlib import Path

import bm25s
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from faclip.embed import load_image_embeddings  # noqa: E402
from faclip.evaluate import VQA_WEIGHTS, _exact_passage, vqa_queries  # noqa: E402
from faclip.index import load_index, search  # noqa: E402
from faclip.lexical import K1, B, term_ids  # noqa: E402
from faclip.tables import load_docstore, load_questions  # noqa: E402
from faclip.text import identity_key  # noqa: E402
from faclip.vqa import min_max  # noqa: E402
from machine import machine_line  # noqa: E402

_WORD = re.compile(r"\w+")


def words(text):
    return _WORD.findall(identity_key(text))


def char_grams(*sizes):
    def grams(text):
        return [f" {w} "[i:i + n] for w in words(text) for n in sizes for i in range(len(w) + 3 - n)]
    return grams


def bm25_scorer(texts, terms):
    vocab = {}
    ids = [[vocab.setdefault(t, len(vocab)) for t in terms(text)] for text in texts]
    model = bm25s.BM25(k1=K1, b=B)
    model.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocab), show_progress=False)

    def scores(query):
        query_ids = [vocab[t] for t in terms(query) if t in vocab]
        return model.get_scores_from_ids(query_ids).astype(np.float64) if query_ids else np.zeros(len(texts))
    return scores


def tfidf_scorer(texts):
    """faclip's previous lexical half: cosine of TF-IDF vectors (sublinear tf, smoothed idf) of character 3- and
    4-grams, computed densely."""
    grams = char_grams(3, 4)
    docs = [Counter(grams(t)) for t in texts]
    vocab = {t: i for i, t in enumerate(sorted({t for d in docs for t in d}))}
    df = np.zeros(len(vocab))
    for d in docs:
        df[[vocab[t] for t in d]] += 1
    idf = np.log((1 + len(docs)) / (1 + df)) + 1

    def vector(counts):
        v = np.zeros(len(vocab))
        for t, n in counts.items():
            if t in vocab:
                v[vocab[t]] = (1 + math.log(n)) * idf[vocab[t]]
        return v / (np.linalg.norm(v) or 1)

    matrix = np.array([vector(d) for d in docs])
    return lambda query: matrix @ vector(Counter(grams(query)))


def ranks(scores):
    r = np.empty(len(scores))
    r[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
    return r


RULES = {
    "raw sum": lambda p, q, w: w * p + (1 - w) * q,
    "min-max (in use)": lambda p, q, w: w * min_max(p) + (1 - w) * min_max(q),
    "RRF k=60": lambda p, q, w: w / (60 + ranks(p)) + (1 - w) / (60 + ranks(q)),
}


def together(queries, question_scores, photo, rule, weight):
    """Ranked relevance (Q, N) of the photo's candidates (every passage here) re-ranked with the question."""
    photo_scores, photo_rows = photo
    hits = np.zeros(photo_rows.shape, dtype=bool)
    for q in range(len(photo_rows)):
        combined = rule(photo_scores[q].astype(np.float64), question_scores[q][photo_rows[q]], weight)
        hits[q] = photo_rows[q][np.argsort(-combined, kind="stable")] == queries.target[q]
    return hits


def best_on_train(split_queries, scores, photo, rule):
    return max(VQA_WEIGHTS, key=lambda w: tuple(_exact_passage(together(split_queries["train"], scores["train"],
                                                                       photo["train"], rule, w), (1,)).values())[::-1])


def main():
    index, manifest = load_index(REPO / "models/index", REPO / "models/finetuned", REPO / "data/docstore.parquet")
    docstore = load_docstore(REPO / "data/docstore.parquet").set_index("id").loc[manifest["passage_ids"]]
    texts = docstore["passage_text"].tolist()
    embeddings = load_image_embeddings(REPO / "data/image_embeddings")
    questions = load_questions(REPO / "data/questions.csv")
    split = {s: vqa_queries(questions, s, manifest["passage_ids"], embeddings) for s in ("train", "test")}
    photo = {s: search(index, q.photo_emb, index.ntotal) for s, q in split.items()}
    scorers = {"TF-IDF, char 3-4-grams (before)": tfidf_scorer(texts),
               "BM25, words": bm25_scorer(texts, words),
               "BM25, char 3-4-grams": bm25_scorer(texts, char_grams(3, 4)),
               "BM25, char 3-5-grams (in use)": bm25_scorer(texts, char_grams(3, 4, 5))}
    ids, _ = term_ids(texts)  # the terms faclip.lexical indexes are the ones measured here
    assert [len(i) for i in ids] == [len(char_grams(3, 4, 5)(t)) for t in texts], "benchmark terms != faclip's"
    print(machine_line())
    print(f"{len(texts)} passages; {len(split['train'].target)} train and {len(split['test'].target)} test questions\n")
    print("| scorer | question alone, train: R@1 / R@5 / MRR | test: R@1 / R@5 / MRR | together (min-max, w best on train): train R@1 / MRR | test R@1 / MRR |")
    print("|---|---|---|---|---|")
    kept = {}
    for name, scorer in scorers.items():
        scores = {s: np.array([scorer(x) for x in q.questions]) for s, q in split.items()}
        alone = {s: _exact_passage(np.argsort(-scores[s], axis=1, kind="stable") == q.target[:, None], (1, 5))
                 for s, q in split.items()}
        rule = RULES["min-max (in use)"]
        w = best_on_train(split, scores, photo, rule)
        both = {s: _exact_passage(together(q, scores[s], photo[s], rule, w), (1,)) for s, q in split.items()}
        cell = lambda m: " / ".join(f"{m[k]:.3f}" for k in ("recall@1", "recall@5", "mrr"))  # noqa: E731
        print(f"| {name} | {cell(alone['train'])} | {cell(alone['test'])} | {both['train']['recall@1']:.3f} / "
              f"{both['train']['mrr']:.3f} (w={w:g}) | {both['test']['recall@1']:.3f} / {both['test']['mrr']:.3f} |")
        kept[name] = scores
    print("\n| lexical scorer, fusion rule | w best on train | train R@1 / MRR | test R@1 / MRR |")
    print("|---|---|---|---|")
    rows = [("TF-IDF (before)", "raw sum")] + [("BM25, char 3-5-grams", rule) for rule in RULES]
    for (scorer, rule), scores in zip(rows, [kept["TF-IDF, char 3-4-grams (before)"]] + [kept["BM25, char 3-5-grams (in use)"]] * 3):
        w = best_on_train(split, scores, photo, RULES[rule])
        both = {s: _exact_passage(together(q, scores[s], photo[s], RULES[rule], w), (1,)) for s, q in split.items()}
        print(f"| {scorer}, {rule} | {w:g} | {both['train']['recall@1']:.3f} / {both['train']['mrr']:.3f} | "
              f"{both['test']['recall@1']:.3f} / {both['test']['mrr']:.3f} |")


if __name__ == "__main__":
    main()
