"""--config FILE: YAML or JSON with the flags' names; the command line wins; a run's config.json repeats the run."""
import json

import pytest

import train_gad


def test_yaml_values_apply_and_the_command_line_wins(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("lr-gad: 1.0e-4\nn_samples: 4\nno_d_warmup: true\nmode: gad\nkl_coef: 0\n")
    cfg = train_gad.parse_args(["--config", str(f), "--n-samples", "6"])
    assert (cfg.lr_gad, cfg.n_samples, cfg.no_d_warmup, cfg.mode, cfg.kl_coef) == (1e-4, 6, True, "gad", 0.0)
    assert isinstance(cfg.kl_coef, float)   # an int where a float is expected is taken as that float


def test_a_runs_config_json_repeats_the_run(tmp_path):
    flags = ["--out-dir", str(tmp_path / "a"), "--seed", "3", "--lr-d", "2e-3", "--world", "long",
             "--gad-steps", "7", "--break-eos-symmetry", "--eval-models", "gad"]
    first = train_gad.parse_args(flags)
    (tmp_path / "config.json").write_text(json.dumps(vars(first)))
    again = train_gad.parse_args(["--config", str(tmp_path / "config.json")])
    assert {k: v for k, v in vars(again).items() if k != "config"} == \
        {k: v for k, v in vars(first).items() if k != "config"}
    other = train_gad.parse_args(["--config", str(tmp_path / "config.json"), "--seed", "4"])
    assert other.seed == 4 and other.lr_d == 2e-3


@pytest.mark.parametrize("text, name, needle", [
    ('{"lr_gad": 1e-4, "learning_rate": 3}', "c.json", "unknown key 'learning_rate'"),
    ('{"n_samples": "eight"}', "c.json", "key 'n_samples': expected int, got 'eight'"),
    ('{"n_samples": true}', "c.json", "key 'n_samples': expected int, got True"),
    ('{"frozen_d": 3}', "c.json", "key 'frozen_d': expected str, got 3"),
    ("[1, 2]", "c.json", "expected a mapping of flag names to values"),
    ("{oops", "c.json", "not valid JSON"),
    ("a: [1, 2\n", "c.yaml", "not valid YAML"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, capsys, text, name, needle):
    (tmp_path / name).write_text(text)
    with pytest.raises(SystemExit):
        train_gad.parse_args(["--config", str(tmp_path / name)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert needle in err and name in err


def test_a_missing_config_file(capsys):
    with pytest.raises(SystemExit):
        train_gad.parse_args(["--config", "no/such.yaml"])
    assert "--config no/such.yaml: file not found" in capsys.readouterr().err
