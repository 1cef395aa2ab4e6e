#!/usr/bin/env python3
"""Benchmark watchfiles vs watchdog for noticing new AI-generated images in a folder.

It decided serve.py --WATCH's watcher library (issue 29: watchdog; benchmarks/RESULTS.md).

Run:  .venv/bin/python benchmarks/bench_watcher_libs.py   (from the repository root)
      (options: --trials 5 --bursts 3 --only SUBSTR --no-probes --json out.json --tmpdir DIR)

Each watcher configuration runs in its own child process (multiprocessing "spawn"), so the
CPU figures (resource.getrusage(RUSAGE_SELF) of the child) contain only the watcher: the
library's threads (Rust notify thread / watchdog emitter+observer threads) plus a tiny
handler that appends (time.monotonic(), kind, path) to a list. The parent does the file
operations, sleeps for a fixed window, then fetches the event list over a pipe; latency is
computed from the child's timestamps (CLOCK_MONOTONIC is system-wide on Linux), so the
fetching does not influence latencies, and no fetching happens inside CPU windows.

Scenarios (unique file names per trial, watched folder = a fresh mkdtemp folder):
  a   in place, ComfyUI-like: open, write ~1.7 MB PNG in 3 chunks 20 ms apart, close
  a2  same, slow writer: 3 chunks 150 ms apart (shows reports that arrive mid-write)
  b   A1111/Forge-like: write x.png.tmp, close, os.replace(x.png.tmp, x.png)
  c   burst: 500 small PNGs shutil.copy'd in a loop from a folder outside the watch
  d   delete an existing png
  e   rename an existing png to a new name
  f   mkdir a new subfolder and immediately write a png into it (date-folder pattern)
Latency = library report time - time the file was complete (close / os.replace / unlink /
rename returned). "first" = first report naming the path; "done" = the report after which
the file is known complete: for watchdog's inotify Observer the FileClosedEvent (or
FileMovedEvent dest / synthetic created), for all others the last report naming the path.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
import zlib

mono = time.monotonic

CONFIGS = [
    dict(name="wf-d100-s20", lib="watchfiles", debounce=100, step=20),
    dict(name="wf-d200-s50", lib="watchfiles", debounce=200, step=50),
    dict(name="wf-poll500", lib="watchfiles", debounce=200, step=50, force_polling=True, poll_delay_ms=500),
    dict(name="wd-inotify", lib="watchdog"),
    dict(name="wd-poll0.5", lib="watchdog", polling=True, timeout=0.5),
]


def is_polling(cfg):
    return bool(cfg.get("force_polling") or cfg.get("polling"))


# ----------------------------------------------------------------------------- child side
def _start_watchfiles(cfg, folder, events, errors, ready):
    """Start watchfiles.watch in a thread; return (stop_fn, alive_fn)."""
    import threading

    import watchfiles

    stop = threading.Event()

    def run():
        try:
            batch = 0
            for changes in watchfiles.watch(
                folder,
                debounce=cfg["debounce"],
                step=cfg["step"],
                rust_timeout=cfg.get("rust_timeout", 1000),
                yield_on_timeout=True,  # first empty yield == watcher is set up
                stop_event=stop,
                force_polling=cfg.get("force_polling", False),
                poll_delay_ms=cfg.get("poll_delay_ms", 300),
                raise_interrupt=False,
            ):
                t = mono()
                if changes:
                    batch += 1
                    for ch, p in changes:
                        events.append((t, ch.name, p, "", batch, False, False))
                ready.set()
        except BaseException as e:  # noqa: BLE001
            errors.append(f"{type(e).__name__}: {e}")
            ready.set()

    th = threading.Thread(target=run, name="watchfiles", daemon=True)
    th.start()

    def stop_fn():
        stop.set()
        th.join(10)
        return not th.is_alive()

    return stop_fn, th.is_alive


def _start_watchdog(cfg, folder, events, ready):
    """Start a watchdog Observer (inotify) or PollingObserver; return (stop_fn, alive_fn)."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    class H(FileSystemEventHandler):
        def on_any_event(self, e):
            events.append((mono(), e.event_type, os.fsdecode(e.src_path),
                           os.fsdecode(e.dest_path) if e.dest_path else "", 0,
                           e.is_directory, bool(getattr(e, "is_synthetic", False))))

    obs = PollingObserver(timeout=cfg["timeout"]) if cfg.get("polling") else Observer()
    obs.schedule(H(), folder, recursive=True)
    obs.start()
    ready.set()

    def stop_fn():
        obs.stop()
        obs.join(10)
        return not obs.is_alive()

    def alive_fn():
        # observer thread alive and all emitters alive
        return obs.is_alive() and all(em.is_alive() for em in list(obs.emitters))

    return stop_fn, alive_fn


def _serve_commands(conn, events, errors, stop_fn, alive_fn):
    """Answer the parent's "cpu" / "events" / "stop" commands until "stop"."""
    import resource

    while True:
        cmd = conn.recv()
        if cmd[0] == "cpu":
            ru = resource.getrusage(resource.RUSAGE_SELF)
            conn.send(ru.ru_utime + ru.ru_stime)
        elif cmd[0] == "events":
            conn.send((events[cmd[1]:], list(errors), alive_fn()))
        elif cmd[0] == "stop":
            t0 = mono()
            ok = stop_fn()
            conn.send((mono() - t0, ok))
            return


def child_main(cfg, folder, conn):
    import threading

    events = []  # (t, kind, path, dest, batch, is_dir, synthetic)
    errors = []
    ready = threading.Event()
    stop_fn = lambda: True  # noqa: E731
    alive_fn = lambda: False  # noqa: E731
    try:
        if cfg["lib"] == "watchfiles":
            stop_fn, alive_fn = _start_watchfiles(cfg, folder, events, errors, ready)
        else:
            stop_fn, alive_fn = _start_watchdog(cfg, folder, events, ready)
    except BaseException as e:  # noqa: BLE001
        errors.append(f"{type(e).__name__}: {e}")
        ready.set()

    ready.wait(15)
    conn.send(("ready", mono(), list(errors)))
    _serve_commands(conn, events, errors, stop_fn, alive_fn)


# ----------------------------------------------------------------------------- parent side
class Watcher:
    def __init__(self, cfg, folder):
        ctx = mp.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=child_main, args=(cfg, folder, child_conn), daemon=True)
        t0 = mono()
        self.proc.start()
        msg = self.conn.recv()
        self.startup_s = mono() - t0
        self.start_errors = msg[2]
        self.events = []
        self.errors = []
        self.alive = True

    def fetch(self):
        self.conn.send(("events", len(self.events)))
        new, self.errors, self.alive = self.conn.recv()
        self.events.extend(new)
        return new

    def cpu(self):
        self.conn.send(("cpu",))
        return self.conn.recv()

    def stop(self):
        self.conn.send(("stop",))
        dt, ok = self.conn.recv()
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
        return dt, ok


EXISTS_KINDS = {"added", "modified", "created", "closed"}


def names_path(e, p):
    t, kind, path, dest, batch, isdir, synth = e
    return (path == p and kind in EXISTS_KINDS) or (kind == "moved" and dest == p)


def analyze(evs, p, t_complete, wd_native):
    hits = [e for e in evs if names_path(e, p)]
    if not hits:
        return None
    first = hits[0][0]
    done = None
    if wd_native:
        for e in hits:
            if e[1] == "closed" or e[1] == "moved" or (e[1] == "created" and e[6]):
                done = e[0]
                break
    if done is None:
        done = hits[-1][0]
    reports = len({e[4] for e in hits}) if hits[0][4] else len(hits)  # watchfiles: batches
    return dict(first=first - t_complete, done=done - t_complete, early=first < t_complete,
                reports=reports)


def seq_for(evs, paths, folder):
    out = []
    for _t, kind, path, dest, batch, _isdir, synth in evs:
        if path in paths or dest in paths:
            s = f"{kind}:{os.path.relpath(path, folder)}"
            if dest:
                s += f"->{os.path.relpath(dest, folder)}"
            if synth:
                s += "(synthetic)"
            if batch:
                s = f"b{batch} " + s
            out.append(s)
    # renumber watchfiles batches from 1 within the trial
    bs = sorted({int(x.split()[0][1:]) for x in out if x.startswith("b") and " " in x})
    ren = {b: i + 1 for i, b in enumerate(bs)}
    return [(f"b{ren[int(x.split()[0][1:])]} " + x.split(" ", 1)[1]) if x.startswith("b") and " " in x else x
            for x in out]


def make_png(w, h, seed=0):
    rnd = os.urandom(w * h * 3)
    raw = b"".join(b"\x00" + rnd[y * w * 3:(y + 1) * w * 3] for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b"")


def write_chunked(path, data, chunks, gap):
    k = -(-len(data) // chunks)
    with open(path, "wb", buffering=0) as f:
        for i in range(chunks):
            if i:
                time.sleep(gap)
            f.write(data[i * k:(i + 1) * k])
    return mono()


def fs_type(path):
    best = ("", "?")
    with open("/proc/mounts") as f:
        for line in f:
            dev, mnt, typ = line.split()[:3]
            if path.startswith(mnt.rstrip("/") + "/") or path == mnt:
                if len(mnt) > len(best[0]):
                    best = (mnt, typ)
    return f"{best[1]} (mounted at {best[0]})"


def med_max(vals, scale=1000.0, fmt="{:.0f}"):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "n/a"
    return (fmt.format(statistics.median(vals) * scale) + " / " + fmt.format(max(vals) * scale))


def idle_cpu_ms(w, seconds):
    """CPU milliseconds the watcher child used over an idle window of `seconds`."""
    c0 = w.cpu()
    time.sleep(seconds)
    c1 = w.cpu()
    return (c1 - c0) * 1000


class Trials:
    """One config's watcher and folder, with the settle / missed windows its trials use."""

    def __init__(self, w, folder, polling, wd_native, big_png):
        self.w = w
        self.folder = folder
        self.wd_native = wd_native
        self.big_png = big_png
        self.win = 0.8 if polling else 0.3          # settle window after each action
        self.max_extra = 1.5 if polling else 0.7    # extra wait before a trial counts as "missed"

    def trial(self, action, expect):
        w = self.w
        start = len(w.events)
        info = action()
        time.sleep(self.win)
        w.fetch()
        extra = 0.0
        while not any(expect(e) for e in w.events[start:]) and extra < self.max_extra:
            time.sleep(0.1)
            extra += 0.1
            w.fetch()
        return info, w.events[start:]


def scenario_in_place(tr, key, gap, n):
    """a / a2: in-place chunked write."""
    rows, seqs = [], []
    for i in range(n):
        p = os.path.join(tr.folder, f"{key}_{i}.png")
        info, evs = tr.trial(lambda p=p: write_chunked(p, tr.big_png, 3, gap), lambda e, p=p: names_path(e, p))
        r = analyze(evs, p, info, tr.wd_native)
        rows.append(r)
        if i == 0:
            seqs = seq_for(evs, {p}, tr.folder)
    return dict(rows=rows, seq=seqs)


def scenario_replace(tr, T):
    """b: tmp + os.replace."""
    rows, seqs = [], []
    for i in range(T):
        p = os.path.join(tr.folder, f"b_{i}.png")
        tmp = p + ".tmp"

        def act(p=p, tmp=tmp):
            with open(tmp, "wb") as f:
                f.write(tr.big_png)
            os.replace(tmp, p)
            return mono()

        info, evs = tr.trial(act, lambda e, p=p: names_path(e, p))
        r = analyze(evs, p, info, tr.wd_native)
        if r is not None:
            # how was the final name reported?
            kinds = sorted({e[1] for e in evs if names_path(e, p)})
            r["final_name_as"] = "+".join(kinds)
        rows.append(r)
        if i == 0:
            seqs = seq_for(evs, {p, tmp}, tr.folder)
    return dict(rows=rows, seq=seqs)


def scenario_delete(tr, T):
    """d: delete."""
    rows, seqs = [], []
    for i in range(T):
        p = os.path.join(tr.folder, f"del{i}.png")

        def act(p=p):
            os.unlink(p)
            return mono()

        info, evs = tr.trial(act, lambda e, p=p: e[2] == p and e[1] == "deleted")
        hits = [e for e in evs if e[2] == p and e[1] == "deleted"]
        rows.append(dict(done=hits[0][0] - info) if hits else None)
        if i == 0:
            seqs = seq_for(evs, {p}, tr.folder)
    return dict(rows=rows, seq=seqs)


def scenario_rename(tr, T):
    """e: rename existing png."""
    rows, seqs = [], []
    for i in range(T):
        old = os.path.join(tr.folder, f"ren{i}.png")
        new = os.path.join(tr.folder, f"renamed{i}.png")

        def act(old=old, new=new):
            os.rename(old, new)
            return mono()

        info, evs = tr.trial(act, lambda e, new=new: names_path(e, new))
        r = analyze(evs, new, info, tr.wd_native)
        if r is not None:
            r["new_as"] = "+".join(sorted({e[1] for e in evs if names_path(e, new)}))
            r["old_deleted_or_moved"] = any(e[2] == old and e[1] in ("deleted", "moved") for e in evs)
        rows.append(r)
        if i == 0:
            seqs = seq_for(evs, {old, new}, tr.folder)
    return dict(rows=rows, seq=seqs)


def scenario_new_subdir(tr, T):
    """f: new subfolder + immediate file."""
    rows, seqs = [], []
    for i in range(T):
        sub = os.path.join(tr.folder, f"2026-01-{i + 10:02d}")
        p = os.path.join(sub, "00001.png")

        def act(sub=sub, p=p):
            os.mkdir(sub)
            with open(p, "wb") as f:
                f.write(tr.big_png[:200000])
            return mono()

        info, evs = tr.trial(act, lambda e, p=p: names_path(e, p))
        rows.append(analyze(evs, p, info, tr.wd_native))
        if i == 0:
            seqs = seq_for(evs, {sub, p}, tr.folder)
    return dict(rows=rows, seq=seqs)


def burst_seen(evs, tset):
    """The burst targets some event reports as existing (or as a move's destination)."""
    return {e[2] for e in evs if e[2] in tset and e[1] in EXISTS_KINDS} | \
           {e[3] for e in evs if e[1] == "moved" and e[3] in tset}


def burst_once(tr, b, small_png_path, burst_win):
    """c, one burst: 500 small PNGs copied in; one row."""
    w = tr.w
    w.fetch()
    start = len(w.events)
    targets = [os.path.join(tr.folder, f"burst{b}_{j:03d}.png") for j in range(500)]
    c0 = w.cpu()
    t_start = mono()
    for tp in targets:
        shutil.copy(small_png_path, tp)
    t_end = mono()
    time.sleep(burst_win)
    c1 = w.cpu()
    w.fetch()
    evs = w.events[start:]
    # give late events up to 4 more seconds before calling them missed
    extra = 0.0
    tset = set(targets)
    while len(burst_seen(evs, tset)) < 500 and extra < 4.0:
        time.sleep(0.5)
        extra += 0.5
        w.fetch()
        evs = w.events[start:]
    per = [analyze(evs, tp, t_end, tr.wd_native) for tp in targets]
    missed = sum(r is None for r in per)
    done = [r["done"] for r in per if r]
    n_file_events = sum(1 for e in evs if not e[5])
    batches = len({e[4] for e in evs if e[4]})
    return dict(all_after_last_copy=max(done) if done else None,
                copy_loop_s=t_end - t_start, missed=missed,
                cpu_ms=(c1 - c0) * 1000, cpu_window_s=t_end - t_start + burst_win,
                file_events_per_file=n_file_events / 500, batches=batches,
                dir_events=sum(1 for e in evs if e[5]), extra_wait_s=extra)


def scenario_burst(tr, B, small_png_path, polling):
    """c: burst of 500 copies, B times."""
    burst_win = 2.0 if polling else 1.0
    rows = [burst_once(tr, b, small_png_path, burst_win) for b in range(B)]
    return dict(rows=rows)


def run_config(cfg, args, big_png, small_png_path):
    polling = is_polling(cfg)
    wd_native = cfg["lib"] == "watchdog" and not polling
    folder = tempfile.mkdtemp(prefix=f"wb-{cfg['name']}-", dir=args.tmpdir)
    T, B = args.trials, args.bursts
    # pre-create files for delete/rename trials before the watcher starts
    for i in range(T):
        for pre in ("del", "ren"):
            with open(os.path.join(folder, f"{pre}{i}.png"), "wb") as f:
                f.write(big_png[:20000])
    res = dict(config=cfg, folder_fs=fs_type(folder))
    w = Watcher(cfg, folder)
    res["startup_s"] = w.startup_s
    res["start_errors"] = w.start_errors
    time.sleep(0.3)
    w.fetch()

    # idle CPU, nearly empty folder
    res["idle_cpu_ms_small"] = idle_cpu_ms(w, args.idle)

    tr = Trials(w, folder, polling, wd_native, big_png)
    for key, gap, n in (("a", 0.02, T), ("a2", 0.15, max(3, T // 2 + 1))):
        res[key] = scenario_in_place(tr, key, gap, n)
    res["b"] = scenario_replace(tr, T)
    res["d"] = scenario_delete(tr, T)
    res["e"] = scenario_rename(tr, T)
    res["f"] = scenario_new_subdir(tr, T)
    res["c"] = scenario_burst(tr, B, small_png_path, polling)

    # idle CPU with ~1.5k files in the folder
    time.sleep(0.3)
    n_files = sum(len(fs) for _, _, fs in os.walk(folder))
    res["idle_cpu_ms_big"] = idle_cpu_ms(w, args.idle)
    res["idle_big_nfiles"] = n_files
    w.fetch()
    res["alive_before_stop"] = w.alive
    res["errors"] = w.errors
    dt, ok = w.stop()
    res["stop_ms"] = dt * 1000
    res["stopped_cleanly"] = ok
    shutil.rmtree(folder, ignore_errors=True)
    return res


def probes(args, big_png):
    """API behaviour probes: missing folder at start; watched folder deleted then recreated."""
    out = {}
    for cfg in CONFIGS:
        if args.only and args.only not in cfg["name"]:
            continue
        if cfg["name"] == "wf-d100-s20":
            continue  # same backend as wf-d200-s50
        polling = is_polling(cfg)
        win = 1.2 if polling else 0.5
        r = {}
        # 1. folder does not exist at start
        missing = os.path.join(tempfile.gettempdir() if not args.tmpdir else args.tmpdir, f"wb-missing-{os.getpid()}")
        w = Watcher(cfg, missing)
        w.fetch()
        r["missing_at_start"] = w.start_errors or w.errors or ["no error"]
        w.stop()
        # 2. watched folder deleted, then recreated at the same path
        folder = tempfile.mkdtemp(prefix="wb-probe-", dir=args.tmpdir)
        with open(os.path.join(folder, "old.png"), "wb") as f:
            f.write(big_png[:1000])
        w = Watcher(cfg, folder)
        time.sleep(0.3)
        w.fetch()
        start = len(w.events)
        shutil.rmtree(folder)
        time.sleep(win)
        w.fetch()
        r["on_delete_events"] = seq_for(w.events[start:], {folder, os.path.join(folder, "old.png")},
                                        os.path.dirname(folder))
        r["on_delete_alive"] = w.alive
        r["on_delete_errors"] = list(w.errors)
        os.mkdir(folder)
        start = len(w.events)
        with open(os.path.join(folder, "new.png"), "wb") as f:
            f.write(big_png[:1000])
        time.sleep(win + 0.2)
        w.fetch()
        r["after_recreate_new_file_seen"] = any(names_path(e, os.path.join(folder, "new.png"))
                                                for e in w.events[start:])
        r["after_recreate_alive"] = w.alive
        dt, ok = w.stop()
        r["stop_after_delete_ms"] = round(dt * 1000, 1)
        r["stop_after_delete_clean"] = ok
        shutil.rmtree(folder, ignore_errors=True)
        if polling:
            # 3. polling: file seen half-written, completed right after that poll (same wall-clock
            #    second): is the completion reported? (mtime resolution of the poller)
            folder = tempfile.mkdtemp(prefix="wb-probe-", dir=args.tmpdir)
            w = Watcher(cfg, folder)
            time.sleep(0.3)
            got = []
            for i in range(3):
                p = os.path.join(folder, f"half{i}.png")
                w.fetch()
                start = len(w.events)
                f = open(p, "wb", buffering=0)
                f.write(big_png[:len(big_png) // 2])
                t_end = mono() + 2.0
                while not any(names_path(e, p) for e in w.events[start:]) and mono() < t_end:
                    time.sleep(0.01)
                    w.fetch()
                f.write(big_png[len(big_png) // 2:])
                f.close()
                t_close = mono()
                time.sleep(1.2)
                w.fetch()
                got.append(any(names_path(e, p) and e[0] > t_close for e in w.events[start:]))
            r["half_written_then_completed_reported"] = f"{sum(got)}/{len(got)}"
            w.stop()
            shutil.rmtree(folder, ignore_errors=True)
        out[cfg["name"]] = r
    return out


def summarize(results):
    lines = []
    hdr = ["config", "a first ms", "a done ms", "a early", "a reports/file", "a2 done ms", "a2 reports/file",
           "b done ms", "b final name", "c all ms", "c missed", "d ms", "e ms", "e new name", "f ms", "f missed"]
    lines.append(" | ".join(hdr))
    lines.append(" | ".join("---" for _ in hdr))
    for r in results:
        a, a2, b, d, e, f = (r[k]["rows"] for k in ("a", "a2", "b", "d", "e", "f"))
        c = r["c"]["rows"]
        row = [
            r["config"]["name"],
            med_max([x["first"] for x in a if x]),
            med_max([x["done"] for x in a if x]),
            f"{sum(1 for x in a if x and x['early'])}/{len(a)}",
            "/".join(str(x["reports"]) for x in a if x),
            med_max([x["done"] for x in a2 if x]),
            "/".join(str(x["reports"]) for x in a2 if x),
            med_max([x["done"] for x in b if x]),
            ",".join(sorted({x["final_name_as"] for x in b if x})) + f" {sum(1 for x in b if x)}/{len(b)}",
            med_max([x["all_after_last_copy"] for x in c]),
            "/".join(str(x["missed"]) for x in c),
            med_max([x["done"] for x in d if x]) + ("" if all(d) else f" ({sum(1 for x in d if not x)} missed)"),
            med_max([x["done"] for x in e if x]),
            ",".join(sorted({x["new_as"] for x in e if x})) + f" {sum(1 for x in e if x)}/{len(e)}",
            med_max([x["done"] for x in f if x]),
            f"{sum(1 for x in f if x is None)}/{len(f)}",
        ]
        lines.append(" | ".join(row))
    lines.append("")
    hdr = ["config", "idle CPU ms/5s (10 files)", "idle CPU ms/5s (~1.5k files)", "burst CPU ms (med/max)",
           "burst window s", "copy loop ms", "events/file", "wf batches", "stop ms", "startup s"]
    lines.append(" | ".join(hdr))
    lines.append(" | ".join("---" for _ in hdr))
    for r in results:
        c = r["c"]["rows"]
        lines.append(" | ".join([
            r["config"]["name"],
            f"{r['idle_cpu_ms_small']:.1f}",
            f"{r['idle_cpu_ms_big']:.1f} ({r['idle_big_nfiles']} files)",
            med_max([x["cpu_ms"] for x in c], scale=1),
            f"{statistics.median(x['cpu_window_s'] for x in c):.2f}",
            med_max([x["copy_loop_s"] for x in c]),
            f"{statistics.median(x['file_events_per_file'] for x in c):.2f}",
            "/".join(str(x["batches"]) for x in c) if r["config"]["lib"] == "watchfiles" else "-",
            f"{r['stop_ms']:.0f} ({'ok' if r['stopped_cleanly'] else 'HUNG'})",
            f"{r['startup_s']:.2f}",
        ]))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--bursts", type=int, default=3)
    ap.add_argument("--idle", type=float, default=5.0, help="idle CPU window in seconds")
    ap.add_argument("--only", default="", help="run only configs whose name contains this")
    ap.add_argument("--no-probes", action="store_true")
    ap.add_argument("--tmpdir", default=None, help="parent dir for the watched temp folders (default: $TMPDIR or /tmp)")
    ap.add_argument("--json", default=os.path.join(tempfile.gettempdir(), "bench_watcher_libs.json"))
    args = ap.parse_args()

    import importlib.metadata as md
    versions = {p: md.version(p) for p in ("watchfiles", "watchdog")}
    t_all = mono()
    print(f"python {sys.version.split()[0]}, {versions}, cpus={os.cpu_count()}, "
          f"tmp fs: {fs_type(os.path.realpath(args.tmpdir or tempfile.gettempdir()))}", flush=True)

    big_png = make_png(768, 768)          # ~1.7 MB, like an SD/SDXL output
    src_dir = tempfile.mkdtemp(prefix="wb-src-", dir=args.tmpdir)
    small_png_path = os.path.join(src_dir, "small.png")
    with open(small_png_path, "wb") as f:
        f.write(make_png(64, 64))           # ~12 KB
    results = []
    try:
        for cfg in CONFIGS:
            if args.only and args.only not in cfg["name"]:
                continue
            t0 = mono()
            r = run_config(cfg, args, big_png, small_png_path)
            results.append(r)
            print(f"  {cfg['name']}: done in {mono() - t0:.1f}s", flush=True)
        pr = {} if args.no_probes else probes(args, big_png)
    finally:
        shutil.rmtree(src_dir, ignore_errors=True)

    print("\nLatency, ms after the file was complete (median / max); negative = reported before complete\n")
    print(summarize(results))
    print("\nEvent sequences (first trial; wf: bN = watchfiles batch N):")
    for r in results:
        print(f"  [{r['config']['name']}]")
        for k, label in (("a", "a in-place"), ("a2", "a2 slow in-place"), ("b", "b tmp+replace"),
                         ("d", "d delete"), ("e", "e rename"), ("f", "f new subdir")):
            print(f"    {label:17s}: {', '.join(r[k]['seq']) or '(nothing)'}")
        if r["errors"] or r["start_errors"] or not r["alive_before_stop"]:
            print(f"    errors={r['errors'] or r['start_errors']} alive={r['alive_before_stop']}")
    if pr:
        print("\nProbes (watched folder missing at start / deleted while watched):")
        for name, r in pr.items():
            print(f"  [{name}] {json.dumps(r)}")
    with open(args.json, "w") as f:
        json.dump(dict(versions=versions, results=results, probes=pr), f, indent=1, default=str)
    print(f"\ntotal {mono() - t_all:.0f}s; raw results in {args.json}")


if __name__ == "__main__":
    main()
