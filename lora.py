"""LoRA, written out: G, the KL reference and D as low-rank adapters on one shared, frozen base (`--lora-rank R`).

  LoRALinear  W x + b  ->  W x + b + (alpha / r) * B (A x)     W [out, in], b frozen (the base's, shared);
              A [r, in] (Kaiming-uniform), B [out, r] = 0: at step 0 an adapted model is exactly its base.

GAD's three players start from the same student weights, so one frozen base can serve all three:
  G    = base + G's adapter (trained)
  ref  = base + a frozen copy of G's adapter, taken at the hand-off (warmup/generator/lora_adapter.pt)
  D    = the base's backbone + D's adapter + D's scalar head (trained)
Each player is an ordinary Hugging Face module whose adapted layers hold the *same* base Linear modules, and
whose embeddings and norms are the same tensors (`role_copy`): the base is in memory once, in bf16 on GPUs.
Only adapters (and D's head) have requires_grad, so only they reach the optimisers and the gradients.

Files: a player's save_pretrained folder holds the merged weights (W + (alpha / r) B A: plain transformers loads
it) and lora_adapter.pt, the adapter alone with the base it belongs to; loading such a folder with --lora-rank
rebuilds base + adapter exactly (resume points, the hand-off's reference, --init-from). Under torchrun each
process holds the whole base and the adapters' gradients are averaged over the processes (no FSDP).
"""
import copy
import math
import os
import types

import torch
import torch.distributed as dist
import torch.nn.functional as F

import parallel

ADAPTER_FILE = "lora_adapter.pt"
BASES = {}  # base folder -> the one frozen base model of this process (shared by every player)


class LoRALinear(torch.nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base                                                   # the shared nn.Linear, frozen
        self.scale = alpha / rank
        self.lora_A = torch.nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))  # [r, in]
        self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))  # [out, r]
        torch.nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x):                                                  # x [..., in] -> [..., out]
        return self.base(x) + self.scale * F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))


def add_adapters(model, rank, alpha, targets):
    """Freeze every weight of `model`, then replace each Linear named in `targets` by a LoRALinear around it."""
    names = set(targets.split(","))
    model.requires_grad_(False)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if name in names and isinstance(child, torch.nn.Linear):
                setattr(parent, name, LoRALinear(child, rank, alpha))
    if not any(isinstance(m, LoRALinear) for m in model.modules()):
        raise SystemExit(f"train_gad.py: --lora-targets {targets}: no such Linear layer in this model")
    return model


def adapters(model):
    """{name: parameter} of the adapters of `model` (its lora_A / lora_B)."""
    return {k: p for k, p in model.named_parameters() if k.endswith(("lora_A", "lora_B"))}


def role_copy(model):
    """A new player on the same base: the adapters copied, every other tensor and every base Linear shared."""
    memo = {id(m.base): m.base for m in model.modules() if isinstance(m, LoRALinear)}
    ours = set(map(id, adapters(model).values()))
    memo.update({id(p): p for p in model.parameters() if id(p) not in ours})
    memo.update({id(b): b for b in model.buffers()})
    return copy.deepcopy(model, memo)


def merged_state_dict(state_dict, scale):
    """A LoRA player's state dict -> the plain model's: W + scale * B @ A under W's own name, adapters dropped."""
    out = {}
    for k, v in state_dict.items():
        if k.endswith(("lora_A", "lora_B")):
            continue
        if ".base." in k:
            stem = k.rsplit(".base.", 1)[0]
            if k.endswith(".weight"):
                a, b = state_dict[stem + ".lora_A"], state_dict[stem + ".lora_B"]
                v = (v.float() + scale * (b.float() @ a.float())).to(v.dtype)
            k = stem + "." + k.rsplit(".", 1)[1]
        out[k] = v
    return out


def _save_pretrained(self, path, state_dict=None, **kwargs):
    """save_pretrained of a LoRA player: the merged weights (a plain folder) + lora_adapter.pt."""
    state_dict = self.state_dict() if state_dict is None else state_dict
    type(self).save_pretrained(self, path, state_dict=merged_state_dict(state_dict, self.lora["scale"]), **kwargs)
    torch.save({"base": self.lora["base"], "rank": self.lora["rank"], "alpha": self.lora["alpha"],
                "targets": self.lora["targets"],
                "adapter": {k: v.detach().cpu() for k, v in state_dict.items() if k.endswith(("lora_A", "lora_B"))}},
               os.path.join(path, ADAPTER_FILE))


def from_pretrained(cls, path, cfg, part=None):
    """cls.from_pretrained(path) in fp32 (full fine-tuning), or with --lora-rank a LoRA `player`; G's and D's one
    loader, so --gradient-checkpointing is switched on here."""
    if cfg.lora_rank:
        model = player(path, cfg, part)
    else:
        model = cls.from_pretrained(path, dtype=torch.float32, trust_remote_code=cfg.trust_remote_code)
    return checkpoint_layers(model) if cfg.gradient_checkpointing else model


def checkpoint_layers(model):
    """--gradient-checkpointing: each decoder layer recomputes its activations in backward instead of keeping them.
    Hugging Face checkpoints a layer only while the layer is in training mode, and from_pretrained gives models in
    eval mode (no dropout: how every player here trains), so the checkpointed modules' own flags are set, not
    their children's: dropout stays off, the numbers are a run's without checkpointing (generator.sample keeps
    every module's flag)."""
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()  # transformers 5; older
    for m in model.modules():
        if getattr(m, "gradient_checkpointing", False):
            m.training = True
    return model


def player(path, cfg, part=None):
    """G (part None) or D's backbone (part "backbone"): a role copy of the shared base with its adapter -- the one
    saved in `path` if there is one (its base is read from there), else a new one on the base `path` itself."""
    saved = os.path.join(path, ADAPTER_FILE)
    info = torch.load(saved, weights_only=True) if os.path.exists(saved) else None
    base_path = info["base"] if info else os.path.realpath(path) if os.path.isdir(path) else path
    if info and (info["rank"], info["alpha"], info["targets"]) != (cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets):
        raise SystemExit(f"train_gad.py: {saved}: rank {info['rank']}, alpha {info['alpha']}, targets "
                         f"{info['targets']} (this run: {cfg.lora_rank}, {cfg.lora_alpha}, {cfg.lora_targets})")
    if base_path not in BASES:
        from transformers import AutoModelForCausalLM
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=parallel.BASE_DTYPE,
                                                    trust_remote_code=cfg.trust_remote_code)
        BASES[base_path] = add_adapters(base, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    model = role_copy(BASES[base_path])
    for m in model.modules() if info is None else []:  # a new adapter: A drawn afresh, B = 0 (the base exactly)
        if isinstance(m, LoRALinear):
            torch.nn.init.kaiming_uniform_(m.lora_A, a=math.sqrt(5))
    if part == "backbone":
        model = model.model                   # D reads the base's hidden states (no LM head)
    for p in adapters(model).values():
        p.data = p.data.float()               # adapters train in fp32 on a bf16 base
        p.requires_grad_(True)
    if info:
        own = adapters(model)
        with torch.no_grad():
            for k, v in info["adapter"].items():
                own[k].copy_(v)
    model.lora = {"base": base_path, "rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "targets": cfg.lora_targets,
                  "scale": cfg.lora_alpha / cfg.lora_rank}
    model.save_pretrained = types.MethodType(_save_pretrained, model)
    return model


def replicate(model):
    """Under torchrun: the whole player on every process; each adapter gradient averaged as it accumulates (an
    average of already-averaged parts plus this micro-batch's is the average of the sums: exact)."""
    model = model.to(parallel.DEVICE)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for p in model.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(lambda q: dist.all_reduce(q.grad, op=dist.ReduceOp.AVG))
    return model
