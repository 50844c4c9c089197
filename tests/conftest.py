"""Shared fixtures. Tests never touch the network: the hub is forced offline and HF caches go to a temp dir."""
import os
import sys
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="gad-hf-"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]  # the project, and its tools (report, serve, ...)

import pytest  # noqa: E402
import torch  # noqa: E402

import world  # noqa: E402


@pytest.fixture(scope="session")
def tok():
    return world.build_tokenizer()


@pytest.fixture(scope="session")
def tiny_lm(tok):
    """A randomly initialised 2-layer Llama over the world's vocabulary (no training, no download)."""
    from transformers import LlamaForCausalLM
    torch.manual_seed(0)
    model = LlamaForCausalLM(world.student_config(tok, hidden=32, layers=2)).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model


@pytest.fixture(scope="session")
def tiny_dir(tiny_lm, tok, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny_lm"))
    tiny_lm.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def default_world():
    """Every test starts and ends in the default embedded world (parsing --world long switches it)."""
    world.use("default")
    yield
    world.use("default")


def run_metrics(out):
    """A run's metrics.jsonl records without the wall-clock seconds."""
    import json
    recs = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    for r in recs:
        r.pop("seconds")
    return recs


def assert_same_run(a, b, models, atol=0.0):
    """Two runs logged the same steps with the same metrics (1e-6) and saved the same weights (within atol)."""
    from safetensors.torch import load_file
    ma, mb = run_metrics(a), run_metrics(b)
    assert [(r["stage"], r["step"]) for r in ma] == [(r["stage"], r["step"]) for r in mb]
    for ra, rb in zip(ma, mb):
        for k, v in ra.items():
            assert rb[k] == pytest.approx(v, abs=1e-6), (ra["stage"], ra["step"], k)
    for model in models:
        wa, wb = (load_file(os.path.join(x, model, "model.safetensors")) for x in (a, b))
        assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], rtol=0, atol=atol) for k in wa), model
