"""Every command of every lab sheet (exercises/lab*.md) runs, in a tiny configuration, in the order given.

python train_gad.py commands get tiny settings inserted before the sheet's own flags (so the lab's change
still wins); tools/experiments.py gets --tiny; tools/probe.py a 2-step fresh D; every runs/ path is moved into a
temporary folder."""
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABS = sorted(f for f in os.listdir(os.path.join(ROOT, "exercises")) if re.match(r"lab\d+_.*\.md$", f))
TINY = ["--pretrain-steps", "20", "--batch-prompts", "4", "--n-samples", "2", "--warmup-steps", "4",
        "--d-only-steps", "1", "--gad-steps", "4", "--seqkd-steps", "4", "--eval-samples", "1", "--save-every", "0",
        "--log-every", "2"]


def commands(sheet):
    text = open(os.path.join(ROOT, "exercises", sheet)).read()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("python "):
                cmds.append(shlex.split(line))
    return cmds


def tiny(cmd, tmp):
    cmd = [os.path.join(tmp, a) if a.startswith("runs/") else a for a in cmd]
    if cmd[1] == "train_gad.py":
        return [sys.executable, "train_gad.py", *TINY, *cmd[2:]]
    if cmd[1] == "tools/experiments.py":
        out = os.path.join(tmp, "runs", "experiments")
        return [sys.executable, "tools/experiments.py", *cmd[2:], "--tiny", "--out", out]
    if cmd[1] == "tools/probe.py":       # a fresh D of 2 steps on 2 prompts x 2 samples
        return [sys.executable, *cmd[1:], "--samples", "2", "--fresh-prompts", "2", "--fresh-steps", "2",
                "--test-prompts", "16"]
    return [sys.executable, *cmd[1:]]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("labs")), set()


def test_there_are_six_labs():
    assert len(LABS) == 6, LABS


@pytest.mark.parametrize("sheet", LABS)
def test_lab_commands_run(sheet, workdir):
    tmp, done = workdir
    cmds = commands(sheet)
    assert any(c[1] == "tools/report.py" and "--compare" in c for c in cmds), f"{sheet}: no report.py --compare"
    assert any(c[1] == "train_gad.py" or c[1] == "tools/experiments.py" for c in cmds), f"{sheet}: no training command"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for cmd in cmds:
        key = " ".join(cmd)
        if key in done:  # the baseline run is shared by the sheets
            continue
        p = subprocess.run(tiny(cmd, tmp), cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert p.returncode == 0, f"{sheet}: {key}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
        if cmd[1] == "tools/report.py":
            assert "| run |" in p.stdout, p.stdout
        done.add(key)
