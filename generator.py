"""The student policy G: sampling, per-token log-probs, and the two generator losses.

Sequences are laid out as [prompt ; response ; pad] rows (`data.pack`). `response_mask` marks the
response tokens, EOS included, at their own positions in `input_ids`; log-probs are aligned the
same way (the log-prob of token j is read from the logits at j-1).

Losses (pure functions returning `(loss, metrics)`):
  sft_loss         warmup and SeqKD:  -1/|T| sum_t log p(y_t | x, y_<t)       (token mean over the batch)
  group_advantages GRPO, paper Eq. 6:  A_i = (r_i - mean_group r) / (std_group r + 1e-6), population std;
                   exactly 0 for a group whose rewards are equal up to float rounding
  k3_kl            KL estimator:       exp(ref - logp) - (ref - logp) - 1    (>= 0, = 0 iff equal)
  policy_loss      PPO-clip + k3 KL, token-mean. With one optimiser step per batch of rollouts the
                   ratio is exactly 1, so the gradient is REINFORCE with group-normalised advantages.
"""
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import AutoModelForCausalLM, GenerationConfig

import lora
import parallel
from data import pack, position_ids


# ---------------------------------------------------------------------------- loading
def load_generator(path, cfg):
    """G (or the KL reference) from a folder or hub name: fp32 master weights (bf16 would round away 1e-6 updates;
    GPUs compute under bf16 autocast), sharded under torchrun; --lora-rank: an adapter on a shared base (lora.py)."""
    model = lora.from_pretrained(AutoModelForCausalLM, path, cfg)  # --gradient-checkpointing switched on there
    return lora.replicate(model) if cfg.lora_rank else parallel.shard(model, parallel.DEVICE)


# ---------------------------------------------------------------------------- sampling
def sampling_config(temperature, max_new_tokens, n, eos_id, pad_id):
    """Sampling's one generation configuration: softmax(logits / temperature) only (top_k 0, top_p 1, no penalty, ban
    or min length), so what is sampled is exactly what `token_logprobs(..., temperature)` trains on; <= 0: greedy."""
    if temperature > 0:
        mode = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0, num_return_sequences=n)
    else:
        mode = dict(do_sample=False, num_return_sequences=1)
    return GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id, **mode)


@torch.no_grad()
def sample(model, tokenizer, prompts, n, temperature, max_new_tokens, gen_batch_size=64, eos_id=None):
    """n responses per prompt (HF `generate`, KV cache), in chunks: len(prompts) * n token-id lists grouped by
    prompt, each with its EOS if the model emitted one (see `finished`). Only `sampling_config` applies: the
    checkpoint's own generation_config (an instruct model's top_k / top_p, ...) is hidden while sampling."""
    eos_id = tokenizer.eos_token_id if eos_id is None else eos_id
    pad_id = tokenizer.pad_token_id
    config = sampling_config(temperature, max_new_tokens, n, eos_id, pad_id)
    modes = {m: m.training for m in model.modules()}  # every module's own flag (lora.checkpoint_layers sets some)
    model.eval()
    out = []
    per_chunk = max(1, gen_batch_size // n)
    own_config = model.generation_config   # (a model shared by threads: teacher.HFTeacher holds a lock)
    model.generation_config = GenerationConfig()
    try:
        for i in range(0, len(prompts), per_chunk):
            chunk = prompts[i:i + per_chunk]
            batch = pack(chunk, [[] for _ in chunk], pad_id, left_pad=True)  # generation wants left padding
            gen = model.generate(input_ids=batch["input_ids"].to(model.device),
                                 attention_mask=batch["attention_mask"].to(model.device), generation_config=config)
            if temperature <= 0 and n > 1:
                gen = gen.repeat_interleave(n, dim=0)
            for row in gen[:, batch["input_ids"].shape[1]:].tolist():
                cut = row.index(eos_id) + 1 if eos_id in row else len(row)
                out.append(row[:cut])
    finally:
        model.generation_config = own_config
        for m, mode in modes.items():
            m.training = mode
    return out


def sample_metrics(samples, eos_id):
    lengths = [len(s) for s in samples]
    return {"response_length": sum(lengths) / len(lengths),
            "truncated": sum(not finished(s, eos_id) for s in samples) / len(samples)}


def finished(response, eos_id):
    return len(response) > 0 and response[-1] == eos_id


# ---------------------------------------------------------------------------- log-probs
LOGITS_PER_CHUNK = 2 ** 24  # floats of [tokens, vocab] logits alive at once in token_logprobs (64 MB in fp32)


def token_logprobs(model, batch, temperature=1.0, with_entropy=False):
    """Per-token log-probs of the response tokens under the model, logits scaled by 1/temperature.

    Returns logp [B, L] (position j = log p(input_ids[j] | input_ids[<j]) where response_mask[j] = 1; 0
    elsewhere) and, if asked, the entropy [B, L] of the same distributions (no gradient). When the [B, L, vocab]
    logits would not fit in LOGITS_PER_CHUNK floats, `chunked_token_logprobs` computes the same numbers."""
    if hasattr(model, "run_sharded"):  # sharded over processes (parallel.py): run inside the root's FSDP hooks
        return model.run_sharded(_token_logprobs, batch, temperature, with_entropy)
    return _token_logprobs(model, batch, temperature, with_entropy)


def _token_logprobs(model, batch, temperature, with_entropy):
    hidden = backbone(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             position_ids=position_ids(batch["attention_mask"])).last_hidden_state   # [B, L, H]
    head = model.get_output_embeddings()
    if hidden.shape[0] * hidden.shape[1] * head.weight.shape[0] > LOGITS_PER_CHUNK:
        return chunked_token_logprobs(model, batch, hidden, temperature, with_entropy)
    mask = batch["response_mask"][:, 1:].bool()                                       # [B, L-1]: j predicts j+1
    targets = batch["input_ids"][:, 1:]                                               # [B, L-1]
    logp, entropy = _chunk_logprobs(model.config, head, hidden, targets, temperature, with_entropy, shift=True)
    logp = F.pad(torch.where(mask, logp, 0.0), (1, 0))                                # [B, L]: token j's at j
    if not with_entropy:
        return logp
    return logp, F.pad(torch.where(mask, entropy, 0.0), (1, 0))                       # [B, L]


def chunked_token_logprobs(model, batch, hidden, temperature, with_entropy):
    """token_logprobs for a large batch or vocabulary: the LM head, log-softmax and entropy run only at the
    positions that predict a response token, in chunks of LOGITS_PER_CHUNK / vocab tokens, each recomputed in
    backward: no [B, L, V] tensor ever exists and the peak is one chunk, whatever the batch or the vocabulary."""
    head = model.get_output_embeddings()
    mask = batch["response_mask"][:, 1:].bool()                                       # [B, L-1]
    hidden = hidden[:, :-1][mask]                                                     # [T, H]
    targets = batch["input_ids"][:, 1:][mask]                                         # [T]
    chunk = max(1, LOGITS_PER_CHUNK // head.weight.shape[0])
    parts = [(hidden.new_zeros(0), hidden.new_zeros(0))]
    for i in range(0, len(targets), chunk):
        args = (model.config, head, hidden[i:i + chunk], targets[i:i + chunk], temperature, with_entropy)
        parts.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False) if torch.is_grad_enabled()
                     else _chunk_logprobs(*args))
    logp = _scatter(mask, torch.cat([p[0] for p in parts]))                           # [B, L]
    if not with_entropy:
        return logp
    return logp, _scatter(mask, torch.cat([p[1] for p in parts]))                     # [B, L]


def _chunk_logprobs(config, head, hidden, targets, temperature, with_entropy, shift=False):
    """hidden [..., H], targets [...] -> log p(target) [...] and entropy [...] (or None); shift: hidden is
    [B, L, H] and targets [B, L-1], so the last position's logits are dropped."""
    logits = head(hidden)
    logits = final_logits(config, (logits[:, :-1] if shift else logits).float()) / temperature     # [..., V]
    logp_all = F.log_softmax(logits, dim=-1)                                          # [..., V]
    logp = logp_all.gather(-1, targets[..., None]).squeeze(-1)                        # [...]
    if not with_entropy:
        return logp, None
    with torch.no_grad():
        return logp, -(logp_all.exp() * logp_all).sum(-1)                             # [...]


def backbone(model):
    """The transformer under the LM head (HF's base_model: model.model for Llama, .transformer for GPT-2)."""
    if model.base_model is model:
        raise ValueError(f"{type(model).__name__}: no base model under the LM head; token_logprobs needs one")
    return model.base_model


def final_logits(config, logits):
    """What some architectures do to the head's output before the softmax (Gemma 2/3, Cohere, Granite)."""
    if getattr(config, "logit_scale", None):
        logits = logits * config.logit_scale
    if getattr(config, "logits_scaling", None):
        logits = logits / config.logits_scaling
    if getattr(config, "final_logit_softcapping", None):
        logits = torch.tanh(logits / config.final_logit_softcapping) * config.final_logit_softcapping
    return logits


def _scatter(mask, values):
    """values at mask's True positions of [B, L-1] -> [B, L], shifted so position j holds token j's value."""
    return F.pad(torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values), (1, 0))


def masked_mean(x, mask, count=None):
    """Mean of x over mask==1 entries (0, not NaN, if all masked). count: the tokens to divide by when x is one
    micro-batch of a larger batch (default: mask's own); the micro-batches' partial means sum to the batch's mean."""
    mask = mask.bool()
    count = mask.sum().clamp(min=1) if count is None else torch.as_tensor(count)
    return torch.where(mask, x, 0.0).sum() / count.to(x.dtype)


def response_tokens(batch):
    """The number of response tokens of a batch, for masked_mean(..., count) over its micro-batches."""
    return batch["response_mask"].bool().sum().clamp(min=1)


# ---------------------------------------------------------------------------- losses
def sft_loss(model, batch, count=None):
    """Warmup / SeqKD loss: token-mean cross-entropy on response tokens (teacher text + EOS).
    count: the step's response tokens when batch is one of its micro-batches (see masked_mean)."""
    logp = token_logprobs(model, batch)                                               # [B, L]
    loss = -masked_mean(logp, batch["response_mask"], count)
    return loss, {"sft_loss": loss.item()}


def group_advantages(rewards, n, eps=1e-6):
    """Paper Eq. 6. rewards [B*n] grouped by prompt -> advantages [B*n], zero mean per group.

      A_i = (r_i - mean(r)) / (std(r) + eps)     std = population std (divide by n), also in the logs

    A group whose rewards are equal up to float rounding (max - min <= 4 ulps of its largest |r|)
    gets exactly 0: the rounding error of its mean divided by a ~0 std would otherwise be a
    random-sign advantage of order 1 (e.g. eight rewards of 50.3 gave +0.79 each)."""
    r = rewards.view(-1, n)                                                           # [B, n]
    adv = (r - r.mean(-1, keepdim=True)) / (group_std(r) + eps)                       # [B, n]
    spread = r.amax(-1, keepdim=True) - r.amin(-1, keepdim=True)                      # [B, 1]
    tied = spread <= 4 * torch.finfo(r.dtype).eps * r.abs().amax(-1, keepdim=True)   # [B, 1]
    return adv.masked_fill(tied, 0.0).view(-1)


def group_std(r):
    """Within-group std of rewards r [B, n] -> [B, 1]: the population std (divide by n), as Eq. 6 here. verl and
    TRL divide by n - 1; under Adam that factor (1.07 at n = 8) only shifts the balance against the KL term."""
    return r.std(-1, keepdim=True, unbiased=False)


def reward_metrics(rewards, n):
    """The log's reward_mean, reward_std and reward_group_std (mean within-group std, Eq. 6) of rewards [B*n]:
    over every process's rewards under torchrun."""
    rewards = parallel.gather(rewards)                                                # [all B*n]
    return {"reward_mean": rewards.mean().item(), "reward_std": rewards.std().item(),
            "reward_group_std": group_std(rewards.view(-1, n)).mean().item()}


def k3_kl(logp, ref_logp):
    """Per-token k3 estimator of KL(pi || ref) on samples from pi: exp(d) - d - 1, d = ref - logp."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def policy_loss(logp, old_logp, ref_logp, advantages, mask, clip_eps=0.2, kl_coef=0.001, count=None):
    """GRPO generator loss (paper Eq. 2 optimised with Eq. 6's advantages), token-mean.

    logp, old_logp, ref_logp, mask: [B*n, L]; advantages: [B*n] (broadcast to every response token).
      ratio = exp(logp - old_logp)
      pg    = -min(ratio * A, clip(ratio, 1-eps, 1+eps) * A)
      loss  = token_mean(pg + kl_coef * k3(logp, ref_logp))
    With old_logp = logp.detach() (one step per rollout batch) the loss *value* is -mean(A) ~ 0
    while its gradient is -A * grad log p: a loss near zero is expected, not a bug.
    count: the step's response tokens when these rows are one micro-batch (see masked_mean)."""
    adv = advantages[:, None]                                                         # [B, 1]
    ratio = torch.exp(logp - old_logp)                                                # [B, L]
    pg = -torch.min(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)       # [B, L]
    kl = k3_kl(logp, ref_logp)                                                        # [B, L]
    loss = masked_mean(pg + kl_coef * kl, mask, count)
    return loss, {"pg_loss": masked_mean(pg, mask, count).item(), "kl": masked_mean(kl, mask, count).item(),
                  "clip_frac": masked_mean(((ratio - 1).abs() > clip_eps).float(), mask, count).item()}
