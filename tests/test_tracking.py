"""--report-to tensorboard | wandb: every metrics.jsonl record also reaches the tracker (no network)."""
import json
import os

import pytest

import train_gad

RUN = ["--batch-prompts", "4", "--n-samples", "2", "--warmup-steps", "2", "--d-only-steps", "1", "--gad-steps", "2",
       "--seqkd-steps", "2", "--max-response-len", "12", "--eval-models", "", "--save-every", "0"]


def records(out):
    return [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]


def test_tensorboard_event_file_holds_every_logged_scalar(tiny_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = str(tmp_path / "run")
    train_gad.main(["--student", tiny_dir, "--out-dir", out, "--report-to", "tensorboard", *RUN])
    events = {phase: EventAccumulator(os.path.join(out, "tensorboard", phase), size_guidance={"scalars": 0}).Reload()
              for phase in ("gad", "seqkd")}                # one event folder per phase
    expected = [(f"{r['stage']}/{k}", r["step"], v) for r in records(out) for k, v in r.items()
                if k not in ("stage", "step") and isinstance(v, (int, float))]
    assert len(expected) > 40 and {"gad/d_acc", "seqkd/sft_loss", "warmup/d_loss"} <= {k for k, _, _ in expected}
    for key, step, value in expected:
        logged = {e.step: e.value for e in events["seqkd" if key.startswith("seqkd/") else "gad"].Scalars(key)}
        assert logged[step] == pytest.approx(value, rel=1e-6, abs=1e-6), (key, step)
    assert all("config" in "".join(e.Tags()["tensors"]) for e in events.values())   # the run's config, as text


def test_wandb_offline_writes_its_run_folder(tiny_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for k, v in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_PROJECT": "gad-test"}.items():
        monkeypatch.setenv(k, v)
    out = str(tmp_path / "run")
    train_gad.main(["--student", tiny_dir, "--out-dir", out, "--report-to", "wandb",
                    "--teacher-base-url", "http://user:secret@127.0.0.1:9/v1", *RUN])
    runs = [d for d in os.listdir(os.path.join(out, "wandb")) if d.startswith("offline-run-")]
    assert len(runs) == 1
    blob = open(os.path.join(out, "wandb", runs[0], f"run-{runs[0].rsplit('-', 1)[1]}.wandb"), "rb").read()
    assert b"gad/d_acc" in blob and b"seqkd/sft_loss" in blob and b"batch_prompts" in blob  # metrics + config
    assert b"secret" not in blob                                                          # never a password
    assert open(os.path.join(out, "wandb_run_id.txt")).read().strip() == runs[0].rsplit("-", 1)[1]


def test_a_missing_tracker_package_is_a_one_line_error(monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(SystemExit):
        train_gad.parse_args(["--report-to", "wandb"])
    assert "pip install -r requirements-tracking.txt" in capsys.readouterr().err.strip().splitlines()[-1]
