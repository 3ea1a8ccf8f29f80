"""Keyword search for text without spaces (Chinese, Japanese, Korean) and FTS5 query building.

FTS5's unicode61 tokenizer makes a whole run of CJK characters one token, so a word in the middle
of a Chinese sentence is never found. We index every CJK run as overlapping character pairs
(bigrams, as Lucene's CJK analyzer does) in a column of its own, and turn a CJK query into the
phrase of its pairs: consecutive pairs match exactly where the query's characters are consecutive.
A longer CJK query also searches its pairs one by one, so a question need not occur verbatim.
"""

from __future__ import annotations

import re

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_CJK_RUN = re.compile(f"[{_CJK}]+")
_WORD = re.compile(r"[^\W_]+")
# Very common English words: they match most chunks, cost time and add almost nothing to the ranking.
_STOPWORDS = frozenset(
    "a an and are as at be by do does for from how i in is it of on or that the this to was what when where "
    "which who why with you your can my me we".split())


def bigrams(run: str) -> list[str]:
    return [run] if len(run) == 1 else [run[i:i + 2] for i in range(len(run) - 1)]


def cjk_terms(text: str) -> str:
    """The CJK runs of `text` as space-separated bigrams (what the `cjk` column holds)."""
    return " ".join(" ".join(bigrams(run)) for run in _CJK_RUN.findall(text))


def query_words(query: str) -> list[str]:
    """The query's non-CJK words, as the keyword search uses them."""
    return _WORD.findall(_CJK_RUN.sub(" ", query))


def has_cjk(text: str) -> bool:
    return bool(_CJK_RUN.search(text))


def has_search_terms(query: str) -> bool:
    """Whether the query has a word or a CJK character: blanks and punctuation alone match nothing meaningful."""
    return bool(query_words(query) or _CJK_RUN.search(query))


def fts_query(query: str, skip: frozenset[str] = frozenset()) -> str:
    """An FTS5 MATCH expression: any of the query's words (OR, ranked by BM25), CJK runs as phrases.
    Words in `skip` (lower case) are left out, unless that would leave nothing."""
    terms: list[str] = []
    for run in _CJK_RUN.findall(query):
        pairs = bigrams(run)
        if len(run) == 1:
            terms.append(f'cjk : "{run}"*')  # a lone character: any pair starting with it
            continue
        terms.append('cjk : "' + " ".join(pairs) + '"')  # the exact run scores highest
        if len(pairs) > 1:
            terms.extend(f'cjk : "{pair}"' for pair in dict.fromkeys(pairs))
    everything = query_words(query)
    words = [w for w in everything if w.lower() not in _STOPWORDS and w.lower() not in skip]
    if not words and not terms:  # only stop words or common words: search them rather than nothing
        words = [w for w in everything if w.lower() not in _STOPWORDS] or everything
    seen: set[str] = set()
    for word in words:
        if word.lower() not in seen:
            seen.add(word.lower())
            terms.append(f'{{heading text}} : "{word}"')
    return " OR ".join(terms)
