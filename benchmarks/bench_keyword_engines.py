#!/usr/bin/env python3
"""Keyword (BM25) engines over Stable Diffusion prompts: tantivy, SQLite FTS5, bm25s (issue 30, the engine choice).

Run:  .venv/bin/pip install tantivy==0.27.0 bm25s==0.3.16   (not in requirements yet: issue 30 picks one)
      .venv/bin/python benchmarks/bench_keyword_engines.py --sizes=1000,1000000 --work=/tmp/kwbench
      (options: --engines=tantivy,fts5,bm25s --queries=200 --exact=20 --no-exact)

Data: N prompts generated from the real open-prompts sample (the `prompt` column of /work/shared/data/1k.csv):
the 998 originals first, then prompts of 3-15 comma-separated phrases drawn at random (seeded numpy RNG) from the
pool of all their phrases. Cached once under --work (prompts-N.txt, one prompt a line, newlines made spaces) with
their analysed text (words-N.txt: " ".join(prompt_search.index.keywords.words(prompt))), which every engine indexes
as is, splitting only on whitespace (tantivy: its "whitespace" tokenizer; FTS5: unicode61; bm25s: str.split).
Queries are analysed by the same `words`. The analysing (2 processes) is timed once, since every engine shares it.

Each build and each query session runs in a child process of its own (this script with --child), so that its
peak RSS is its own (VmHWM; ru_maxrss would carry the parent's across exec). Build = indexing + committing (+ FTS5's
optimize, tantivy's merges); "whole" adds the shared analysing. Open = a fresh process opening the index from disk
(warm page cache: the OS keeps it). Queries: top 40 by BM25, ids returned; three kinds: rare single words
(artist-like words from the data), two-three words with OR or AND, quoted phrases. bm25s has neither AND nor
phrases: it runs them as OR (bag of words) and its phrase "matches" are the documents holding all the phrase's words.
Exactness: for --exact phrases, every engine's full match set against a brute-force scan of the analysed texts
(consecutive words).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CSV = Path("/work/shared/data/1k.csv")
ENGINES = ("tantivy", "fts5", "bm25s")
TOP = 40
SEED = 30


# ----------------------------------------------------------------------------- data
def originals() -> list[str]:
    import pandas as pd

    return [str(p) for p in pd.read_csv(CSV)["prompt"].fillna("").tolist()]


def generate(n: int, path: Path) -> None:
    import numpy as np

    base = [p.replace("\n", " ").replace("\r", " ") for p in originals()]
    pool = sorted({ph.strip() for p in base for ph in p.split(",") if ph.strip()})
    rng = np.random.default_rng(SEED)
    extra = max(0, n - len(base))
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for p in base[:n]:
            out.write(p + "\n")
        done = 0
        while done < extra:
            chunk = min(1_000_000, extra - done)
            counts = rng.integers(3, 16, chunk)
            picks = rng.integers(0, len(pool), int(counts.sum())).tolist()
            at = 0
            lines = []
            for c in counts.tolist():
                lines.append(", ".join(pool[j] for j in picks[at:at + c]))
                at += c
            out.write("\n".join(lines) + "\n")
            done += chunk
    tmp.rename(path)


def _analyse_chunk(lines: list[str]) -> str:
    from prompt_search.index.keywords import words

    return "".join(" ".join(words(line)) + "\n" for line in lines)


def analyse(src: Path, dst: Path) -> float:
    from multiprocessing import get_context

    t0 = time.perf_counter()
    tmp = dst.with_suffix(".tmp")
    with open(src, encoding="utf-8") as f, open(tmp, "w", encoding="utf-8") as out, \
            get_context("spawn").Pool(2) as pool:
        def chunks():
            batch = []
            for line in f:
                batch.append(line.rstrip("\n"))
                if len(batch) == 20_000:
                    yield batch
                    batch = []
            if batch:
                yield batch

        for text in pool.imap(_analyse_chunk, chunks(), chunksize=1):
            out.write(text)
    tmp.rename(dst)
    return time.perf_counter() - t0


def dataset(n: int, work: Path) -> dict:
    """The cached prompts and analysed texts of size n, and how long analysing took."""
    prompts, texts, meta = work / f"prompts-{n}.txt", work / f"words-{n}.txt", work / f"meta-{n}.json"
    if meta.exists():
        return json.loads(meta.read_text())
    t0 = time.perf_counter()
    generate(n, prompts)
    gen_s = time.perf_counter() - t0
    analyse_s = analyse(prompts, texts)
    nwords = 0
    with open(texts, encoding="utf-8") as f:
        for line in f:
            nwords += line.count(" ") + 1
    info = dict(n=n, generate_s=gen_s, analyse_s=analyse_s, words_per_prompt=nwords / n,
                prompts_mb=prompts.stat().st_size / 1e6, texts_mb=texts.stat().st_size / 1e6)
    meta.write_text(json.dumps(info))
    return info


def read_texts(path: Path):
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            yield i, line.rstrip("\n")


# ----------------------------------------------------------------------------- queries
def make_queries(count: int, exact: int) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """(kind, query text) pairs, and the phrases (word lists) of the exactness check, all from the 1k originals."""
    from prompt_search.index.keywords import words

    rnd = random.Random(SEED)
    docs = [words(p) for p in originals()]
    df = Counter(w for d in docs for w in set(d))
    after_by = sorted({d[i + 1] for d in docs for i in range(len(d) - 1) if d[i] == "by"})
    rare = [w for w in after_by if df[w] <= 5 and len(w) >= 4 and w.isalpha()]
    rare += sorted(w for w, c in df.items() if c <= 3 and len(w) >= 5 and w.isalpha() and w not in rare)
    singles = rnd.sample(rare[:200], k=min(len(rare[:200]), count * 35 // 100))
    multi = []
    while len(multi) < count * 30 // 100:
        d = rnd.choice(docs)
        if len(set(d)) < 3:
            continue
        ws = rnd.sample(sorted(set(d)), k=rnd.choice((2, 3)))
        multi.append(" OR ".join(ws) if len(multi) % 2 else " AND ".join(ws))
    phrases = []
    seen = set()
    while len(phrases) < count - len(singles) - len(multi):
        p = rnd.choice(originals_phrases())
        ws = words(p)
        if len(ws) < 2:
            continue
        k = rnd.choice((2, 2, 3, 4))
        start = rnd.randrange(0, max(1, len(ws) - k + 1))
        ph = tuple(ws[start:start + k])
        if len(ph) >= 2 and ph not in seen:
            seen.add(ph)
            phrases.append(list(ph))
    queries = [("single", w) for w in singles] + [("multi", m) for m in multi]
    queries += [("phrase", '"' + " ".join(p) + '"') for p in phrases]
    return queries, phrases[:exact]


def originals_phrases() -> list[str]:
    global _PHRASES
    if _PHRASES is None:
        _PHRASES = [ph for p in originals() for ph in p.split(",") if ph.strip()]
    return _PHRASES


_PHRASES = None


def parse(query: str) -> tuple[str, list[str]]:
    """A query's mode (single, or, and, phrase) and its analysed words."""
    from prompt_search.index.keywords import words

    if query.startswith('"'):
        return "phrase", words(query)
    if " AND " in query:
        return "and", [w for part in query.split(" AND ") for w in words(part)]
    if " OR " in query:
        return "or", [w for part in query.split(" OR ") for w in words(part)]
    ws = words(query)
    return ("single" if len(ws) == 1 else "or"), ws


# ----------------------------------------------------------------------------- engines
class Tantivy:
    name = "tantivy"

    @staticmethod
    def schema():
        import tantivy

        sb = tantivy.SchemaBuilder()
        sb.add_integer_field("id", stored=False, fast=True, indexed=False)
        sb.add_text_field("body", stored=False, tokenizer_name="whitespace", index_option="position")
        return sb.build()

    @classmethod
    def build(cls, texts: Path, path: Path) -> None:
        import tantivy

        path.mkdir(parents=True)
        index = tantivy.Index(cls.schema(), path=str(path))
        writer = index.writer(heap_size=256_000_000)
        for i, text in read_texts(texts):
            writer.add_document(tantivy.Document(id=i, body=text))
        writer.commit()
        writer.wait_merging_threads()

    def open(self, path: Path) -> None:
        import tantivy

        self.tv = tantivy
        self.index = tantivy.Index.open(str(path))
        self.schema_ = self.index.schema
        self.searcher = self.index.searcher()

    def _query(self, mode: str, ws: list[str]):
        q = self.tv.Query
        if mode == "phrase" and len(ws) > 1:
            return q.phrase_query(self.schema_, "body", ws)
        terms = [q.term_query(self.schema_, "body", w) for w in ws]
        if len(terms) == 1:
            return terms[0]
        occur = self.tv.Occur.Must if mode in ("and", "phrase") else self.tv.Occur.Should
        return q.boolean_query([(occur, t) for t in terms])

    def search(self, mode: str, ws: list[str], top: int = TOP) -> list[int]:
        hits = self.searcher.search(self._query(mode, ws), limit=top, count=False).hits
        return self.searcher.fast_field_values("id", [a for _, a in hits])

    def phrase_all(self, ws: list[str]) -> set[int]:
        q = self._query("phrase", ws)
        n = self.searcher.search(q, limit=1, count=True).count
        hits = self.searcher.search(q, limit=max(1, n), count=False).hits
        return set(self.searcher.fast_field_values("id", [a for _, a in hits]))


class Fts5:
    name = "fts5"

    @staticmethod
    def build(texts: Path, path: Path) -> None:
        path.mkdir(parents=True)
        db = sqlite3.connect(path / "fts.db")
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("CREATE VIRTUAL TABLE t USING fts5(body, content='', tokenize='unicode61 remove_diacritics 0')")
        with db:
            db.executemany("INSERT INTO t(rowid, body) VALUES (?, ?)", read_texts(texts))
        with db:
            db.execute("INSERT INTO t(t) VALUES ('optimize')")
        db.close()

    def open(self, path: Path) -> None:
        self.db = sqlite3.connect(f"file:{path / 'fts.db'}?mode=ro", uri=True)
        self.db.execute("SELECT rowid FROM t LIMIT 0").fetchall()  # reads the schema

    @staticmethod
    def _match(mode: str, ws: list[str]) -> str:
        if mode == "phrase":
            return '"' + " ".join(ws) + '"'
        return (" OR " if mode == "or" else " AND ").join(f'"{w}"' for w in ws)

    def search(self, mode: str, ws: list[str], top: int = TOP) -> list[int]:
        sql = "SELECT rowid FROM t WHERE t MATCH ? ORDER BY rank LIMIT ?"
        return [r for (r,) in self.db.execute(sql, (self._match(mode, ws), top))]

    def phrase_all(self, ws: list[str]) -> set[int]:
        return {r for (r,) in self.db.execute("SELECT rowid FROM t WHERE t MATCH ?", (self._match("phrase", ws),))}


class Bm25s:
    name = "bm25s"

    @staticmethod
    def build(texts: Path, path: Path) -> None:
        import bm25s

        vocab: dict[str, int] = {}
        ids = [[vocab.setdefault(w, len(vocab)) for w in text.split()] for _, text in read_texts(texts)]
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocab), create_empty_token=False,
                        show_progress=False)
        retriever.save(str(path), show_progress=False)

    def open(self, path: Path) -> None:
        import bm25s

        self.r = bm25s.BM25.load(str(path), mmap=True, show_progress=False)
        self.n = int(self.r.scores["num_docs"])

    def search(self, mode: str, ws: list[str], top: int = TOP) -> list[int]:
        ws = [w for w in ws if w in self.r.vocab_dict]  # bm25s: bag of words only, every mode runs as OR
        if not ws:
            return []
        docs, _ = self.r.retrieve([ws], k=min(top, self.n), show_progress=False, n_threads=1)
        return docs[0].tolist()

    def phrase_all(self, ws: list[str]) -> set[int]:
        """No phrases in bm25s: the documents holding all the words (its CSC columns intersected)."""
        s = self.r.scores
        found = None
        for w in ws:
            t = self.r.vocab_dict.get(w)
            if t is None:
                return set()
            docs = set(s["indices"][s["indptr"][t]:s["indptr"][t + 1]].tolist())
            found = docs if found is None else found & docs
        return found or set()


CLASSES = {c.name: c for c in (Tantivy, Fts5, Bm25s)}


# ----------------------------------------------------------------------------- child side
def memory() -> dict:
    status = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            status[key] = int(value.split()[0]) / 1024  # MiB
    status["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # inherits the parent's on exec
    return status


def child_build(engine: str, texts: Path, path: Path) -> dict:
    cls = CLASSES[engine]
    if engine == "tantivy":
        import tantivy  # noqa: F401  (imports outside the timing)
    elif engine == "bm25s":
        import bm25s  # noqa: F401
    t0 = time.perf_counter()
    cls.build(texts, path)
    return dict(build_s=time.perf_counter() - t0, mem=memory())


def child_query(engine: str, path: Path, queries: list[tuple[str, str]], phrases: list[list[str]]) -> dict:
    if engine == "tantivy":
        import tantivy  # noqa: F401
    elif engine == "bm25s":
        import bm25s  # noqa: F401
    parse("warm up the regular expressions")
    mem_before = memory()
    eng = CLASSES[engine]()
    t0 = time.perf_counter()
    eng.open(path)
    open_s = time.perf_counter() - t0
    mem_open = memory()
    t0 = time.perf_counter()
    eng.search(*parse(queries[0][1]))
    first_s = time.perf_counter() - t0
    for _, q in queries:  # a warm pass, then the timed one
        eng.search(*parse(q))
    times: dict[str, list[float]] = {}
    hits = 0
    for kind, q in queries:
        t0 = time.perf_counter()
        found = eng.search(*parse(q))
        times.setdefault(kind, []).append(time.perf_counter() - t0)
        hits += len(found)
    mem_after = memory()
    matches = [sorted(eng.phrase_all(p)) for p in phrases]
    return dict(open_s=open_s, first_s=first_s, times=times, hits=hits, mem_before=mem_before, mem_open=mem_open,
                mem_after=mem_after, matches=matches)


def child_main(spec: dict) -> None:
    if spec["what"] == "build":
        result = child_build(spec["engine"], Path(spec["texts"]), Path(spec["path"]))
    else:
        result = child_query(spec["engine"], Path(spec["path"]), spec["queries"], spec["phrases"])
    Path(spec["out"]).write_text(json.dumps(result))


# ----------------------------------------------------------------------------- parent side
def run_child(spec: dict, work: Path) -> dict:
    out = work / "child.json"
    out.unlink(missing_ok=True)
    spec = dict(spec, out=str(out))
    subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], check=True, cwd=ROOT)
    return json.loads(out.read_text())


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def brute_force(texts: Path, phrases: list[list[str]]) -> list[set[int]]:
    needles = [" " + " ".join(p) + " " for p in phrases]
    found: list[set[int]] = [set() for _ in phrases]
    for i, text in read_texts(texts):
        padded = " " + text + " "
        for k, needle in enumerate(needles):
            if needle in padded:
                found[k].add(i)
    return found


def measure(n: int, work: Path, engines: list[str], queries, phrases) -> dict:
    data = dataset(n, work)
    texts = work / f"words-{n}.txt"
    truth = brute_force(texts, phrases) if phrases else []
    results = dict(data=data, engines={}, truth_sizes=[len(t) for t in truth])
    for engine in engines:
        path = work / f"{engine}-{n}"
        shutil.rmtree(path, ignore_errors=True)
        print(f"[{time.strftime('%H:%M:%S')}] N={n} {engine}: build", file=sys.stderr, flush=True)
        built = run_child(dict(what="build", engine=engine, texts=str(texts), path=str(path)), work)
        built["size_mb"] = du(path) / 1e6
        print(f"[{time.strftime('%H:%M:%S')}] N={n} {engine}: query", file=sys.stderr, flush=True)
        spec = dict(what="query", engine=engine, path=str(path), queries=queries, phrases=phrases)
        queried = run_child(spec, work)
        exact = []
        for got, want in zip(queried.pop("matches"), truth, strict=True):
            got = set(got)
            tp = len(got & want)
            exact.append((tp / len(got) if got else 1.0, tp / len(want) if want else 1.0))
        results["engines"][engine] = dict(built, **queried, exact=exact)
        (work / f"results-{n}.json").write_text(json.dumps(results))
    return results


# ----------------------------------------------------------------------------- report
def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] * 1000


def versions() -> str:
    from importlib.metadata import version

    return (f"Python {platform.python_version()}, tantivy {version('tantivy')}, bm25s {version('bm25s')}, "
            f"SQLite {sqlite3.sqlite_version}, numpy {version('numpy')}, scipy {version('scipy')}")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def report_size(res: dict) -> list[str]:
    d = res["data"]
    lines = [f"### N = {d['n']:,}", "",
             f"Data: {d['words_per_prompt']:.1f} words a prompt, prompts {d['prompts_mb']:.0f} MB, analysed text "
             f"{d['texts_mb']:.0f} MB; analysing (shared, 2 processes): {d['analyse_s']:.1f} s.", "",
             "| engine | index+commit s | whole s | disk MB | build peak RSS MB | open ms | 1st query ms "
             "| single p50/p99 ms | multi p50/p99 ms | phrase p50/p99 ms | all p50/p99 ms "
             "| query RSS MB (peak / anon) |",
             "|---" * 12 + "|"]
    for name, e in res["engines"].items():
        t = e["times"]
        every = [x for v in t.values() for x in v]
        cells = [f"{pct(t.get(k, [0]), .5):.2f} / {pct(t.get(k, [0]), .99):.2f}" for k in ("single", "multi", "phrase")]
        cells.append(f"{pct(every, .5):.2f} / {pct(every, .99):.2f}")
        ma = e["mem_after"]
        lines.append(f"| {name} | {e['build_s']:.2f} | {e['build_s'] + d['analyse_s']:.2f} | {e['size_mb']:.1f} "
                     f"| {e['mem']['VmHWM']:.0f} | {e['open_s'] * 1000:.2f} | {e['first_s'] * 1000:.2f} | "
                     + " | ".join(cells) + f" | {ma['VmHWM']:.0f} / {ma['RssAnon']:.0f} |")
    if res["truth_sizes"]:
        sizes = res["truth_sizes"]
        lines += ["", f"Exact phrases ({len(sizes)} phrases, {min(sizes)}-{max(sizes)} matches each by brute force):",
                  "", "| engine | mean precision | mean recall | phrases exact |", "|---|---|---|---|"]
        for name, e in res["engines"].items():
            p = [x for x, _ in e["exact"]]
            r = [y for _, y in e["exact"]]
            ok = sum(1 for x, y in e["exact"] if x == 1.0 and y == 1.0)
            lines.append(f"| {name} | {statistics.mean(p):.4f} | {statistics.mean(r):.4f} | {ok}/{len(p)} |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,1000000")
    ap.add_argument("--work", default="/tmp/kwbench")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--exact", type=int, default=20)
    ap.add_argument("--no-exact", action="store_true")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        return child_main(json.loads(args.child))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    queries, phrases = make_queries(args.queries, 0 if args.no_exact else args.exact)
    engines = [e for e in args.engines.split(",") if e]
    out = ["## Keyword engines over Stable Diffusion prompts (issue 30)", "",
           f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}", "", versions(), "",
           f"{len(queries)} queries ({', '.join(f'{k} {c}' for k, c in Counter(k for k, _ in queries).items())}), "
           f"top {TOP} by BM25, ids returned; times in the querying process after one warm pass.", ""]
    for n in (int(s) for s in args.sizes.split(",")):
        out += report_size(measure(n, work, engines, queries, phrases))
    print("\n".join(out))


if __name__ == "__main__":
    main()
