"""One warmup step and one GAD step of train_gad on fixed rollouts, in one process or under torchrun; rank 0 writes
the metrics and the full updated weights of G and D to OUT (torch.save). Used by tests/test_parallel.py:
`python tests/dist_step.py MODEL OUT [--lean] [FLAGS]` and `torchrun --nproc-per-node 2 tests/dist_step.py ...`
must agree.

The rollouts are injected: each prompt's n samples are a function of the prompt alone (lengths 1 to 12, some
ending in EOS), so every process count sees the same samples whichever rank a prompt lands on."""
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import generator  # noqa: E402
import parallel  # noqa: E402
import train_gad  # noqa: E402
import world  # noqa: E402
from data import Data, load_tokenizer  # noqa: E402
from discriminator import load_discriminator  # noqa: E402
from generator import load_generator  # noqa: E402


def fixed_samples(tok):
    def sample(model, tokenizer, prompts, n, *args, **kwargs):
        out = []
        for p in prompts:
            rng = random.Random(hash(tuple(p)) % 2 ** 31)
            for _ in range(n):
                ids = [rng.randrange(3, len(tok)) for _ in range(rng.randint(1, 12))]
                out.append(ids[:-1] + [tok.eos_token_id] if rng.random() < 0.6 else ids)
        return out
    return sample


def main(model_dir, out, *flags):
    if "--lean" in flags:  # the lean log-probs: response positions only, chunks of 5 tokens recomputed in backward
        generator.LOGITS_PER_CHUNK, flags = 700, [f for f in flags if f != "--lean"]
    parallel.init()
    cfg = train_gad.parse_args(["--student", model_dir, "--batch-prompts", "4", "--n-samples", "4",
                                "--micro-batch-size", "3", *flags])
    tok = load_tokenizer(model_dir)
    prompts = world.prompts("train")[:16]
    rng = random.Random(0)
    data = Data(tok, prompts, [world.teacher_respond(p, rng) for p in prompts], cfg, print)
    train_gad.sample = fixed_samples(tok)
    torch.manual_seed(0)
    G = load_generator(model_dir, cfg)
    ref = load_generator(model_dir, cfg).eval().requires_grad_(False)
    D = load_discriminator(model_dir, cfg)  # the same new head on every rank (same seed)
    g_opt, d_opt = train_gad.adamw(G, cfg.lr_warmup, cfg), train_gad.adamw(D, cfg.lr_d, cfg)
    metrics = []
    batch = parallel.local(data.next())
    metrics.append(parallel.mean_metrics(train_gad.warmup_step(G, D, g_opt, d_opt, tok, batch, cfg)[0]))
    batch = parallel.local(data.next())
    metrics.append(parallel.mean_metrics(train_gad.gad_step(G, D, ref, g_opt, d_opt, tok, batch, cfg)[0]))
    weights = {name: parallel.full_weights(m).get("state_dict", m.state_dict()) for name, m in (("G", G), ("D", D))}
    if parallel.is_main():
        torch.save({"metrics": metrics, "weights": weights, "processes": parallel.processes()}, out)
    parallel.finish()


if __name__ == "__main__":
    main(*sys.argv[1:])
