"""The run's files, written so that a crash never leaves one half-written: every write goes to a temporary name and
is renamed into place, or is one locked append (metrics.jsonl, the teacher cache); the run folder's lock; the trackers
that mirror metrics.jsonl (--report-to).

Model folders (`save_model`) are plain `save_pretrained` folders. Resume points (`save_resume`) live in
runs/<name>/resume/step-<phase>-<step>/ and hold
    generator/ discriminator/     weights (safetensors) + tokenizer
    state.pt                      both AdamW states (full, not sharded, under torchrun), every rank's torch / CUDA
                                  RNG state, the data order and the data RNG state (loaded with
                                  weights_only=True: tensors and plain types only)
    state.json                    phase ("gad" = warmup + GAD steps, or "seqkd") and the next step
runs/<name>/resume/latest.json names the newest complete one; it is replaced atomically after the folder is
complete, so a kill at any moment leaves the previous resume point intact. The KL reference is not
saved: it is the post-warmup generator, rebuilt from runs/<name>/warmup/generator.
Under torchrun every rank calls these (the full weights are gathered from the shards); rank 0 writes.
"""
import contextlib
import errno
import fcntl
import json
import math
import os
import re
import shutil
import sys
import uuid

import torch

import parallel


def save_players(G, D, tok, name, cfg):
    """runs/<name>/<warmup|gad|seqkd>/generator (and discriminator/): plain save_pretrained folders."""
    save_model(G, os.path.join(cfg.out_dir, name, "generator"), tok)
    if D is not None:
        save_model(D, os.path.join(cfg.out_dir, name, "discriminator"), tok)


def save_model(model, path, tok=None):
    """save_pretrained into a temp folder, then rename: a crash never leaves a half-written checkpoint."""
    weights = parallel.full_weights(model)
    if parallel.is_main():
        tmp = path + ".tmp"
        old = path + ".old"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, **weights)
        if tok is not None:
            tok.save_pretrained(tmp)
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    parallel.barrier()  # the other ranks may read it next (the KL reference)


def write_json(path, obj):
    """obj as strict JSON (NaN / inf written as null), atomically."""
    write_atomic(path, json.dumps(json_safe(obj), indent=2, allow_nan=False))


def write_atomic(path, text):
    """text into a temp file, fsynced, then renamed over path: never half-written; a failure is one line."""
    if os.path.isdir(path):
        raise SystemExit(f"{path}: is a folder; move it away to write this file")
    try:
        with open(path + ".tmp", "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(path + ".tmp")
        raise SystemExit(f"cannot write {path}: {e.strerror}") from None


def read_json(path):
    """A JSON file the project wrote (config.json, eval.json, ...), or a one-line error naming it."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) else f"not valid JSON: {str(e)[:80]}"
        raise SystemExit(f"{path}: cannot be read ({why}); restore or remove it") from None


def json_safe(obj):
    """obj with every non-finite float (NaN, inf) as None: what strict JSON can hold."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def append_jsonl(path, rec):
    """One JSON record appended as one locked line (append_locked); a failed write stops the run in one line."""
    try:
        append_locked(path, (json.dumps(json_safe(rec), allow_nan=False) + "\n").encode())
    except OSError as e:
        raise SystemExit(f"train_gad.py: cannot write {path}: {e.strerror}; make room, then rerun with --resume") \
            from None


def append_locked(path, line):
    """Append one line (bytes ending in a newline) to a file that other processes may append to as well: one write
    under an exclusive lock, fsynced. A fragment left by a writer that died mid-line is cut off first, so it never
    swallows this line; a write that fails (a full disk) is cut back off, so the file never ends torn, and raises
    OSError. Returns 1 if a fragment was cut, else 0."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        torn = bool(size) and os.pread(fd, 1, size - 1) != b"\n"
        if torn:
            size -= len(_last_line(fd, size))
            os.ftruncate(fd, size)
        try:
            if os.write(fd, line) != len(line):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)
    return int(torn)


def _last_line(fd, size, block=1 << 16):
    """The bytes after the file's last newline."""
    start = max(0, size - block)
    while True:
        data = os.pread(fd, size - start, start)
        cut = data.rfind(b"\n")
        if cut >= 0 or start == 0:
            return data[cut + 1:]
        start = max(0, start - block)


def read_jsonl(path):
    """The records of a JSONL file the project wrote. A torn last line (a crash or a full disk mid-write) is left out;
    a damaged line elsewhere is a one-line error naming the file and line. Lines split on "\\n" only."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if i == len(lines):  # the last line, without its newline: torn
                break
            raise SystemExit(f"{path}: line {i} is not valid JSON (a damaged file?); remove that line") from None
    return out


def save_resume(out_dir, phase, next_step, tok, data, gen, g_opt, disc=None, d_opt=None):
    g_weights = parallel.full_weights(gen)
    g_state = parallel.optimizer_state(gen, g_opt)
    d_weights = parallel.full_weights(disc) if disc is not None else {}
    d_state = parallel.optimizer_state(disc, d_opt) if disc is not None else None
    rng = parallel.rng_states()
    if parallel.is_main():
        _write_resume(out_dir, phase, next_step, tok, data, gen, g_weights, g_state, disc, d_weights, d_state, rng)
    parallel.barrier()


def _write_resume(out_dir, phase, next_step, tok, data, gen, g_weights, g_state, disc, d_weights, d_state, rng):
    root = os.path.join(out_dir, "resume")
    name = f"step-{phase}-{next_step:07d}"
    tmp = os.path.join(root, name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    gen.save_pretrained(os.path.join(tmp, "generator"), **g_weights)
    tok.save_pretrained(os.path.join(tmp, "generator"))
    if disc is not None:
        disc.save_pretrained(os.path.join(tmp, "discriminator"), **d_weights)
    torch.save({"g_opt": g_state, "d_opt": d_state, "processes": len(rng),
                "torch_rng": [r[0] for r in rng], "cuda_rng": [r[1] for r in rng if r[1] is not None],
                "data_order": list(data.order), "data_rng": data.rng.getstate()}, os.path.join(tmp, "state.pt"))
    write_json(os.path.join(tmp, "state.json"), {"phase": phase, "next_step": next_step})
    shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    os.replace(tmp, os.path.join(root, name))
    write_json(os.path.join(root, "latest.json"), {"path": name, "phase": phase, "next_step": next_step})
    for other in os.listdir(root):  # keep only the newest complete resume point
        if other.startswith("step-") and other != name:
            shutil.rmtree(os.path.join(root, other), ignore_errors=True)


def mark_phase_start(out_dir, phase):
    """Point the resume pointer at the start of `phase` ("done" when all is trained); drop older points."""
    root = os.path.join(out_dir, "resume")
    os.makedirs(root, exist_ok=True)
    write_json(os.path.join(root, "latest.json"), {"path": None, "phase": phase, "next_step": 0})
    for other in os.listdir(root):
        if other.startswith("step-"):
            shutil.rmtree(os.path.join(root, other), ignore_errors=True)


def latest(out_dir):
    """The newest complete resume point: {"dir", "phase", "next_step"}, or None."""
    pointer = os.path.join(out_dir, "resume", "latest.json")
    if not os.path.exists(pointer):
        return None
    info = read_json(pointer)
    info["dir"] = os.path.join(out_dir, "resume", info["path"]) if info["path"] else None
    return info


def restore_state(info, data, g=None, d=None):
    """Load the optimiser / RNG / data-order state of a resume point. g, d: (model, optimiser) pairs to load."""
    state = torch.load(os.path.join(info["dir"], "state.pt"), weights_only=True)
    if state["processes"] != parallel.processes():
        written = processes(state["processes"])
        raise SystemExit(f"train_gad.py: --resume: {info['dir']} was written by {written}; resume it with as many "
                         f"(this run has {parallel.processes()})")
    rank = parallel.rank()
    torch.set_rng_state(state["torch_rng"][rank])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"][rank])
    data.order = list(state["data_order"])
    data.rng.setstate(_as_rng_state(state["data_rng"]))
    for player, key in ((g, "g_opt"), (d, "d_opt")):
        if player is not None:
            parallel.load_optimizer_state(*player, state[key])


def processes(k):
    return f"{k} process" + ("" if k == 1 else "es")


def _as_rng_state(s):
    """random.setstate wants (int, tuple, None); a round trip may have turned tuples into lists."""
    return (s[0], tuple(s[1]), s[2])


# ---------------------------------------------------------------------------- metrics.jsonl on resume
def reset_metrics(out_dir, stages, from_step=0):
    """Drop the records of `stages` from step `from_step` on in metrics.jsonl and samples.jsonl: this invocation
    writes them again."""
    for name in ("metrics.jsonl", "samples.jsonl"):
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            keep = [json.dumps(r) + "\n" for r in read_jsonl(path)
                    if r.get("stage") not in stages or r["step"] < from_step]
            write_atomic(path, "".join(keep))  # a torn last line is dropped here too


def lock_folder(out_dir):
    """An exclusive lock on out_dir/.lock for this process's life: a second run on the same folder stops at once."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        f = open(os.path.join(out_dir, ".lock"), "a")
    except OSError as e:
        raise SystemExit(f"train_gad.py: cannot write to --out-dir {out_dir}: {e.strerror}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise SystemExit(f"train_gad.py: another train_gad.py is running in {out_dir} (it holds {f.name}); wait for it "
                         "to end, or give this run another --out-dir") from None
    return f


# ---------------------------------------------------------------------------- never a credential in what is written
def scrub(text):
    """Remove any API key found in the environment, and any user:password in a URL, from a message."""
    for var, key in os.environ.items():
        if var.endswith("API_KEY") and len(key) >= 4:
            text = text.replace(key, "***")
    return redact_url(text)


def redact_url(url):
    """A URL with any user:password replaced by ***, for config.json and logs."""
    return re.sub(r"//[^/@\s]+@", "//***@", url) if url else url


# ---------------------------------------------------------------------------- trackers (--report-to)
class Tracker:
    """--report-to: every metrics.jsonl record also goes to TensorBoard (out_dir/tensorboard/<gad|seqkd>/) or Weights &
    Biases (project $WANDB_PROJECT, default "gad"; offline with WANDB_MODE=offline), with the run's config. Rank 0 only.
    A resumed run continues its W&B run and TensorBoard drops the steps it redoes; a fresh start is a new W&B run."""

    def __init__(self, cfg, config, resume=None):
        self.kind = cfg.report_to
        self.writer = None
        self.writers = {}
        self.config = config
        self.out_dir = cfg.out_dir
        self.resume = resume
        if self.kind == "wandb":
            import wandb  # optional extra: requirements-tracking.txt
            # W&B records the command line (sys.argv): no credential in it may reach the tracker
            sys.argv[:] = [redact_url(a) for a in sys.argv]
            id_file = os.path.join(cfg.out_dir, "wandb_run_id.txt")  # --resume continues the same W&B run
            run_id = open(id_file).read().strip() if cfg.resume and os.path.exists(id_file) else uuid.uuid4().hex[:8]
            with open(id_file, "w") as f:
                f.write(run_id)
            self.writer = wandb.init(project=os.environ.get("WANDB_PROJECT", "gad"), id=run_id, resume="allow",
                                     name=os.path.basename(os.path.abspath(cfg.out_dir)), dir=cfg.out_dir,
                                     config=config)

    def tensorboard(self, phase):
        """One event folder per phase; purge_step hides what an earlier invocation logged from the step redone on."""
        if phase not in self.writers:
            from torch.utils.tensorboard import SummaryWriter  # optional extra: requirements-tracking.txt
            start = self.resume["next_step"] if self.resume and self.resume["phase"] == phase else 0
            self.writers[phase] = SummaryWriter(os.path.join(self.out_dir, "tensorboard", phase), purge_step=start)
            text = json.dumps(self.config, indent=2).replace("\n", "\n    ")
            self.writers[phase].add_text("config", "    " + text)
        return self.writers[phase]

    def log(self, rec):
        values = {f"{rec['stage']}/{k}": v for k, v in rec.items()
                  if k not in ("stage", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.kind == "tensorboard":
            writer = self.tensorboard("seqkd" if rec["stage"] == "seqkd" else "gad")
            for key, value in values.items():
                writer.add_scalar(key, value, rec["step"])
            writer.flush()
        elif self.kind == "wandb":
            self.writer.log({**values, f"{rec['stage']}/step": rec["step"]})

    def close(self):
        for writer in self.writers.values():
            writer.close()
        self.writers = {}
        if self.writer is not None:
            self.writer.finish()
            self.writer = None
