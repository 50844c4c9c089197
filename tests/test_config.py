"""--config FILE: YAML or JSON with the flags' names; the command line wins; a run's config.json repeats the run."""
import json

import pytest

import run
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
    (tmp_path / "config.json").write_text(json.dumps(run.config_record(first)))
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


# ---------------------------------------------------------------------------- replays and odd values (audit 3)
def test_yaml_floats_without_a_dot_are_taken_as_numbers(tmp_path):
    (tmp_path / "c.yaml").write_text("lr_warmup: 5e-4\nlr_d: 1E-3\n")   # PyYAML reads these as strings
    cfg = train_gad.parse_args(["--config", str(tmp_path / "c.yaml")])
    assert (cfg.lr_warmup, cfg.lr_d) == (5e-4, 1e-3)


@pytest.mark.parametrize("flags", [["--lr-gad", "nan"], ["--lr-warmup", "nan"], ["--temperature", "nan"],
                                   ["--kl-coef", "nan"], ["--clip-eps", "nan"], ["--eval-temperature", "nan"],
                                   ["--lr-d", "inf"], ["--teacher-timeout", "inf"]])
def test_non_finite_flag_values_are_refused_naming_the_flag(flags, capsys):
    with pytest.raises(SystemExit):
        train_gad.parse_args(flags)
    assert f"{flags[0]} must be a finite number, got {float(flags[1])}" in capsys.readouterr().err


def test_a_yaml_nan_is_refused_naming_file_and_key(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("kl_coef: .nan\n")
    with pytest.raises(SystemExit):
        train_gad.parse_args(["--config", str(tmp_path / "c.yaml")])
    assert "c.yaml: key 'kl_coef': expected a finite number, got nan" in capsys.readouterr().err


def test_an_error_echoes_at_most_a_short_value(tmp_path, capsys):
    lines = ["  - &a [x, x, x, x, x, x, x, x, x]"] + [f"  - &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]"
                                                         for p, c in zip("abcdefg", "bcdefgh")]
    (tmp_path / "bomb.yaml").write_text("n_samples:\n" + "\n".join(lines) + "\n")   # 9 * 8^7 values by reference
    with pytest.raises(SystemExit):
        train_gad.parse_args(["--config", str(tmp_path / "bomb.yaml")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "key 'n_samples': expected int" in err and len(err) < 300


def test_a_replayed_config_json_does_not_write_into_its_run(tmp_path, capsys):
    out = tmp_path / "a"
    first = train_gad.parse_args(["--out-dir", str(out), "--gad-steps", "7"])
    out.mkdir()
    (out / "config.json").write_text(json.dumps(run.config_record(first)))
    with pytest.raises(SystemExit):
        train_gad.parse_args(["--config", str(out / "config.json")])
    assert f"names --out-dir {out}, which holds a run already" in capsys.readouterr().err
    assert train_gad.parse_args(["--config", str(out / "config.json"), "--out-dir", str(tmp_path / "b")]).gad_steps == 7
    assert train_gad.parse_args(["--config", str(out / "config.json"), "--resume"]).resume      # told to: continue
    assert train_gad.parse_args(["--config", str(out / "config.json"), "--out-dir", str(out)]).out_dir == str(out)


def test_a_replay_derives_the_seqkd_steps_anew(tmp_path):
    first = train_gad.parse_args(["--out-dir", str(tmp_path / "a")])
    assert first.seqkd_steps == 264 and run.config_record(first)["seqkd_steps"] == -1      # kept as given
    (tmp_path / "c.json").write_text(json.dumps(run.config_record(first)))
    again = train_gad.parse_args(["--config", str(tmp_path / "c.json"), "--out-dir", str(tmp_path / "b"),
                                  "--gad-steps", "10"])
    assert again.seqkd_steps == 88 + 10
    (tmp_path / "w" / "generator").mkdir(parents=True)
    warm = train_gad.parse_args(["--out-dir", str(tmp_path / "c"), "--init-from", str(tmp_path / "w")])
    assert warm.warmup_steps == 0 and run.config_record(warm)["warmup_steps"] == 88
