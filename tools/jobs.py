"""The job scheduler behind experiments.py: declared jobs run in parallel processes, one CPU thread each, as
soon as the jobs they read are done; a finished job with the same arguments is reused, and a job whose input
is redone is redone too.

A job is (kind, args), keyed by the path it writes:
    ("train", argv)                  python train_gad.py argv       -> a run folder (done: its args.json == argv)
    ("call", [module.function, *a])  module.function(*a), a dict    -> a JSON file (done: its "job" entry == args)
    ("start", argv)                  the embedded world's pretrained start, shared by the embedded runs
Dependencies are read off the arguments: a job depends on every pending job whose path appears in them.
"""
import concurrent.futures as futures
import contextlib
import importlib
import json
import multiprocessing
import os
import sys
import shutil
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root

import run
import train_gad
from checkpoint import write_json

JOBS = {}  # output path -> (kind, args)
AFTER = {}  # output path -> paths of other jobs it reads that its arguments do not name


def declare(path, kind, args, after=()):
    JOBS[path] = (kind, args)
    AFTER[path] = set(after)
    return path


def is_done(path, job):
    kind, args = job
    if kind == "train":
        marker = os.path.join(path, "args.json")
        return os.path.exists(marker) and json.load(open(marker)) == args
    if kind == "call":
        return os.path.exists(path) and json.load(open(path)).get("job") == args
    return os.path.exists(os.path.join(path, "before", "generator", "world.json"))  # "start"


def dependencies(path, job, pending):
    """The pending jobs this one reads: those whose path appears in its arguments (and the shared start)."""
    kind, args = job
    deps = {p for p in pending if p != path and (p in AFTER.get(path, ()) or any(
        isinstance(a, str) and (a == p or a.startswith(p + os.sep)) for a in args))}
    if kind == "train" and "--student" not in args:
        deps |= {p for p in pending if pending[p][0] == "start"}
    return deps


def to_do(start, start_argv):
    """The declared jobs not done yet, plus those that read one of them, plus the shared start if needed."""
    pending = {p: j for p, j in JOBS.items() if not is_done(p, j)}
    while True:  # a job that reads a job to be (re)done is redone too
        stale = {p: j for p, j in JOBS.items() if p not in pending and dependencies(p, j, pending)}
        if not stale:
            break
        pending.update(stale)
    if any(k == "train" and "--student" not in a for k, a in pending.values()) and \
            not is_done(start, ("start", start_argv)):
        pending[start] = ("start", start_argv)
    return pending


def train_all(workers, start, start_argv, log):
    """Do every job of to_do, `workers` processes at a time, one CPU thread each; a job starts once the jobs it
    reads are done. `start` is the folder of the shared pretrained start (made with train_gad.py start_argv)."""
    pending, running, t0 = to_do(start, start_argv), {}, time.time()  # running: future -> (path, job)
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no forked torch threads
    with futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=torch.set_num_threads,
                                     initargs=(1,)) as pool:
        while pending or running:
            unfinished = {**pending, **dict(running.values())}
            ready = [p for p, j in pending.items() if not dependencies(p, j, unfinished)]
            needed = set().union(*[dependencies(p, j, unfinished) for p, j in pending.items()])
            for path in sorted(ready, key=lambda p: p not in needed)[:workers - len(running)]:  # unblockers first
                job = pending.pop(path)
                log(f"[experiments] start: {describe(path, job)}")
                running[pool.submit(work, path, job, start)] = (path, job)
            done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for f in done:
                path, job = running.pop(f)
                error, seconds = f.result()
                if error:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise SystemExit(f"experiments.py: {path} failed: {error} (log: {log_file(path, job)})")
                log(f"[experiments] done in {seconds:.0f} s: {path}")
    log(f"[experiments] every run is ready ({time.time() - t0:.0f} s)")


def describe(path, job):
    kind, args = job
    return {"train": lambda: "python train_gad.py " + " ".join(args),
            "call": lambda: f"{args[0]}{tuple(args[1:])}",
            "start": lambda: f"pretraining the shared start in {path}"}[kind]()


def log_file(path, job):
    return path[:-len(".json")] + ".log" if job[0] == "call" else os.path.join(path, "train.log")


def work(path, job, start):
    """One job, in a worker process; returns (error or None, seconds). Its output goes to its log file.
    Jobs run on one CPU thread, except the shared start, which everything waits for: it gets up to 4."""
    (kind, args), t0 = job, time.time()
    os.makedirs(os.path.dirname(path) if kind == "call" else path, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):  # the "done" marker goes until the job is done again
        os.remove(path if kind == "call" else os.path.join(path, "args.json"))
    if kind == "train":  # redone with other arguments: the folder's earlier run goes (train_gad refuses to mix two)
        for entry in set(os.listdir(path)) - {"before", "train.log"}:
            shutil.rmtree(os.path.join(path, entry)) if os.path.isdir(os.path.join(path, entry)) else \
                os.remove(os.path.join(path, entry))
    if kind == "train" and "--student" not in args and not os.path.isdir(os.path.join(path, "before")):
        shutil.copytree(os.path.join(start, "before"), os.path.join(path, "before"))  # the shared start
    with open(log_file(path, job), "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            if kind == "train":
                train_gad.main(args)
                write_json(os.path.join(path, "args.json"), args)
            elif kind == "call":
                module, function = args[0].rsplit(".", 1)
                write_json(path, {**getattr(importlib.import_module(module), function)(*args[1:]), "job": args})
            else:
                torch.set_num_threads(min(4, os.cpu_count() or 1))  # the same bits as one thread, on this CPU
                run.student_folder(train_gad.parse_args(["--out-dir", path, *args]), print)
                torch.set_num_threads(1)
        except SystemExit as e:  # train_gad reports bad input / a failed run this way
            return str(e), time.time() - t0
    return None, time.time() - t0
