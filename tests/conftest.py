"""Shared fixtures. Tests never touch the network: the hub is forced offline and HF caches go to a temp dir."""
import os
import sys
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="gad-hf-"))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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
