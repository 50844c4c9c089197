"""Data parallel over processes: `torchrun --nproc-per-node N train_gad.py ...` runs the same loop on N ranks,
G, D and the KL reference sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`). Plain `python train_gad.py`
is one process, and then every function here does nothing (or the one-process thing).

How the loop stays the same (each point is one function below):
  local          each rank takes its own whole prompt groups of the step's batch: a prompt's n samples stay on one
                 rank, so the group-normalised advantages (Eq. 6) are computed where the samples are
  token_count    FSDP averages gradients over ranks; a loss divided by (the step's tokens over all ranks / N)
                 therefore gives exactly the full batch's token-mean gradient (the Bradley-Terry mean needs
                 nothing: every rank has the same number of pairs)
  shard          each decoder layer is one FSDP unit, the whole model the root (HF's `_no_split_modules` names
                 the layer classes); G and D are separate FSDP roots, so each backward reduces only its own model's
                 gradients (the GAN-under-DDP trap of one reducer serving two models cannot happen);
                 generator.token_logprobs, which calls the backbone and LM head itself, runs inside the root's
                 FSDP hooks through `run_sharded`
  gathered       sampling gathers the weights once per `generate` call, not once per generated token
  mean_metrics   the logged metrics are means over ranks (every rank has the same number of rows)
  from_main      rank 0 alone makes the starting student and asks the teacher; every rank gets its (prompts,
                 answers), so all train on one data set
  same_flags / together   every rank has rank 0's flags, and a rank that stops takes the others with it
  full_weights / optimizer_state / load_optimizer_state / rng_states
                 checkpoints are ordinary save_pretrained folders written by rank 0 from the full state dict;
                 resume points hold the full optimiser states and every rank's RNG state

Precision: the shards (master weights, AdamW states) stay fp32; on GPUs they are gathered as bf16 for compute
(FSDP2 MixedPrecisionPolicy) and gradients are reduced in fp32. Simplified: no overlap tuning; each process reads
the whole checkpoint before sharding; the run folder must be on a filesystem every node sees (resume points, the
teacher cache), as for any multi-node checkpointing.
"""
import contextlib
import os
import sys
import types

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from data import Batch, cut

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # this process's device (under torchrun: its rank's GPU)
BASE_DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32  # a frozen LoRA base (lora.py); adapters fp32
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
# On GPUs the shards stay fp32 (master weights, AdamW) and are gathered as bf16 for compute (half the all-gather
# bytes, half the whole G held while sampling); gradients are reduced in fp32. GAD_FSDP_BF16=1 forces it on CPU.
BF16 = torch.cuda.is_available() or os.environ.get("GAD_FSDP_BF16") == "1"


def amp():
    """bf16 autocast on GPU (weights and optimiser stay fp32); plain fp32 on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if DEVICE == "cuda" else contextlib.nullcontext()


def init(flags=None, log=None):
    """Join the process group when started by torchrun with more than one process (else: one process); check that
    every process has rank 0's flags (else they would wait on each other's collectives) and that the step's
    batch_prompts split into whole prompt groups per process. Returns log on rank 0, a no-op elsewhere."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # "cuda" is now this rank's GPU
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if flags is not None:
        same_flags(flags)
        check(flags["batch_prompts"])
    return log if is_main() else (lambda *args, **kwargs: None)


def same_flags(flags):
    """Every process stops with one line if any was started with other flag values than rank 0."""
    if processes() == 1:
        return
    everyone = [None] * processes()
    dist.all_gather_object(everyone, {k: v for k, v in flags.items() if k != "as_given"})
    for r, other in enumerate(everyone[1:], 1):
        changed = [k for k in everyone[0] if other.get(k) != everyone[0][k]]
        if changed:
            what = ", ".join(f"--{k.replace('_', '-')} {everyone[0][k]!r} -> {other.get(k)!r}" for k in changed[:4])
            raise SystemExit(f"train_gad.py: torchrun process {r} has other flags than process 0 ({what}); every "
                             "process must be started with the same command")


def together(fn):
    """fn() on every process; if it stops one of them (SystemExit), all stop with that message, so none is left
    waiting in a collective for a process that has gone."""
    try:
        out = fn()
        error = None
    except SystemExit as e:
        out = None
        error = str(e.code)
    if processes() > 1:
        errors = [None] * processes()
        dist.all_gather_object(errors, error)
        error = next((e for e in errors if e is not None), None)
    if error is not None:
        raise SystemExit(error)
    return out


def from_main(fn):
    """fn() on rank 0 alone; every process gets its result (the same objects), or stops with rank 0's error.
    Used for the teacher's answers: only rank 0 asks, and every rank trains on exactly its data."""
    if processes() == 1:
        return fn()
    box = [None]
    if is_main():
        try:
            box = [("ok", fn())]
        except SystemExit as e:
            box = [("stop", str(e.code))]
        except BaseException as e:  # noqa: BLE001 -- the others must not wait for a rank that has failed
            box = [("stop", f"train_gad.py: process 0 failed: {type(e).__name__}: {e}")]
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "stop":
        raise SystemExit(value)
    return value


def processes():
    """How many processes train together (1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def is_main():
    return rank() == 0


def barrier():
    if processes() > 1:
        dist.barrier()


def finish():
    """Leave the process group together, then leave the process at once. Everything is written by then; what is
    skipped is the interpreter's finalisation, where tensors still held by gloo's worker threads can abort a
    process at exit (SIGABRT, "terminate called without an active exception"; pytorch/pytorch#179291). It hit
    a two-process test twice in three CI runs of the whole suite and never in isolation."""
    if processes() > 1:
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def check(batch_prompts):
    """A one-line error when the step's prompts cannot be split into whole groups per rank."""
    if batch_prompts % processes():
        raise SystemExit(f"train_gad.py: --batch-prompts {batch_prompts} must be a multiple of the {processes()} "
                         "torchrun processes (each process samples whole prompt groups)")


# ---------------------------------------------------------------------------- the batch and the counts
def local(batch):
    """This rank's prompts of the step (a data.Batch): prompts rank*B/N ... (rank+1)*B/N, rows cut to their longest."""
    if processes() == 1:
        return batch
    per = len(batch.prompts) // processes()
    i = rank() * per
    j = (rank() + 1) * per
    return Batch(batch.idx[i:j], batch.prompts[i:j], cut(batch.teacher, i, j), cut(batch.teacher_for_d, i, j))


def token_count(count):
    """The count a rank divides its token sum by: all ranks' tokens / N (FSDP then averages over the N ranks)."""
    if processes() == 1:
        return count
    total = torch.as_tensor(count, dtype=torch.float64).clone()
    dist.all_reduce(total)
    return (total / processes()).to(torch.float32)


def mean(x):
    """The mean over ranks of a number."""
    return _reduced(x, dist.ReduceOp.SUM) / processes() if processes() > 1 else x


def largest(x):
    """The largest over ranks of a number."""
    return _reduced(x, dist.ReduceOp.MAX) if processes() > 1 else x


def _reduced(x, op):
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t, op=op)
    return t.item()


def mean_metrics(metrics):
    """Every numeric metric averaged over ranks (None stays None: a skipped update is skipped on every rank)."""
    if processes() == 1:
        return metrics
    keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return metrics | {k: v / processes() for k, v in zip(keys, t.tolist())}


def gather(t):
    """The tensors of all ranks concatenated in rank order (equal sizes): for metrics over the whole batch."""
    if processes() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(processes())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def full_tensor(norm):
    """A gradient norm that clip_grad_norm_ returned as a DTensor (FSDP) as an ordinary tensor."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


# ---------------------------------------------------------------------------- sharding and sampling
def shard(model, device, layers_of=None):
    """One process: the model on device. Under torchrun, FSDP2: one unit per decoder layer + the root, each rank
    keeping its shard on its device. layers_of: the HF model whose _no_split_modules names the layer classes (the
    model itself for G; D's backbone for D). Its `generate` gathers the weights once per call."""
    if processes() == 1:
        return model.to(device)
    names = set(getattr(layers_of or model, "_no_split_modules", None) or [])
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if BF16 else None
    kwargs = {"mp_policy": policy} if policy else {}
    for module in list(model.modules()):
        if type(module).__name__ in names:
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    # generator.token_logprobs calls the backbone and the LM head itself, not model.forward: run_sharded(fn, ...)
    # runs fn(model, ...) inside the root's FSDP hooks, as forward would be
    model.run_sharded = types.MethodType(run_inside, model)
    register_fsdp_forward_method(model, "run_sharded")
    if hasattr(model, "generate"):
        generate = model.generate

        def generate_gathered(*args, **kwargs):
            with gathered(model):
                return generate(*args, **kwargs)
        model.generate = generate_gathered
    return model


def run_inside(model, fn, *args, **kwargs):
    return fn(model, *args, **kwargs)


@contextlib.contextmanager
def gathered(model):
    """Every FSDP unit of model unsharded for the block and kept whole across its forwards (for sampling); then
    resharded, and back to fully_shard's default: layers reshard after forward, the root (needed first in
    backward) does not."""
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(unit is not model, recurse=False)


# ---------------------------------------------------------------------------- checkpoints
def full_weights(model):
    """{} in one process; under torchrun {"state_dict": the full weights} (on rank 0; every rank must call this)."""
    if processes() == 1:
        return {}
    return {"state_dict": get_model_state_dict(model, options=FULL)}


def optimizer_state(model, opt):
    """The optimiser's state to save: its state_dict in one process, the full (unsharded) one under torchrun."""
    return opt.state_dict() if processes() == 1 else get_optimizer_state_dict(model, opt, options=FULL)


def load_optimizer_state(model, opt, state):
    if processes() == 1:
        opt.load_state_dict(state)
    else:
        set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))


def rng_states():
    """[per rank: (torch CPU RNG state, this rank's CUDA RNG state or None)], on every rank."""
    mine = (torch.get_rng_state(), torch.cuda.get_rng_state() if torch.cuda.is_available() else None)
    if processes() == 1:
        return [mine]
    states = [None] * processes()
    dist.all_gather_object(states, mine)
    return states


def seed(base):
    """Under torchrun, each rank samples with its own RNG stream (after the models are built alike)."""
    if processes() > 1:
        torch.manual_seed(base + 1_000_003 * rank())
