"""`pixio-robot probe`: ridge probes from frozen tokens to object positions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pixio_robot.cli import main
from policies.probe import ridge_probe


def test_ridge_probe_recovers_a_linear_map_and_beats_the_mean():
    rng = np.random.default_rng(0)
    # positions spread over many feature dimensions, wider than the number of samples, as in
    # token maps
    y = rng.uniform(-0.2, 0.2, size=(120, 3))
    x = y @ rng.normal(size=(3, 400)) + 0.05 * rng.normal(size=(120, 400))
    pred = ridge_probe(x[:100], y[:100], x[100:])
    err = np.sqrt(((pred - y[100:]) ** 2).mean(0))
    base = np.sqrt(((y[:100].mean(0) - y[100:]) ** 2).mean(0))
    assert np.all(err < 0.2 * base)
    noise = rng.normal(size=(120, 400))  # features that carry nothing: no better than the mean
    pred = ridge_probe(noise[:100], y[:100], noise[100:])
    assert np.sqrt(((pred - y[100:]) ** 2).mean(0)).mean() > 0.8 * base.mean()


def test_probe_command_on_a_tiny_encoder(tmp_path, capsys):
    out = tmp_path / "probe.json"
    args = ["probe", "encoder=vitn16", "env=reach", "scenes=24", "image_size=32", f"out={out}", "progress=false"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| encoder patches |" in printed and "| random patches |" in printed
    result = json.loads(out.read_text())
    assert result["targets"] == ["goal_x", "goal_y", "goal_z"] and result["held_out"] == 5
    assert set(result["rmse_cm"]) == {"mean", "encoder patches", "encoder global", "random patches", "random global"}
    assert all(np.isfinite(v) and v > 0 for v in result["rmse_cm"].values())
    assert result["block"] == 5 and result["blocks"] == 6 and "block 5 (the last)" in printed


def test_the_random_baseline_is_the_mean_over_its_inits(tmp_path, capsys):
    # random_inits=2 averages the errors of the random encoders seeded 0 and 1, each of which is
    # what a single-init probe with that random_seed reports
    args = ["probe", "encoder=vitn16", "env=reach", "scenes=24", "image_size=32", "progress=false"]
    single = []
    for seed in (0, 1):
        out = tmp_path / f"r{seed}.json"
        assert main([*args, "random_inits=1", f"random_seed={seed}", f"out={out}"]) == 0
        single.append(json.loads(out.read_text()))
    capsys.readouterr()
    out = tmp_path / "both.json"
    assert main([*args, "random_inits=2", f"out={out}"]) == 0
    assert "(mean of 2 inits)" in capsys.readouterr().out
    both = json.loads(out.read_text())
    assert both["random_seeds"] == [0, 1]
    for kind in ("patches", "global"):
        each = [r["rmse_cm"][f"random {kind}"] for r in single]
        assert each[0] != each[1]  # two inits, two different baselines
        assert both["random_rmse_cm_per_init"][kind] == pytest.approx(each)
        assert both["rmse_cm"][f"random {kind}"] == pytest.approx(np.mean(each))


def test_probe_reads_the_block_it_is_given(tmp_path):
    # block=0 reads other tokens than the last block, so the errors differ
    errors = {}
    for block in (0, -1):
        out = tmp_path / f"{block}.json"
        args = ["probe", "encoder=vitn16", "env=reach", "scenes=24", "image_size=32", f"block={block}"]
        assert main([*args, "compare_random=false", f"out={out}", "progress=false"]) == 0
        result = json.loads(out.read_text())
        errors[result["block"]] = result["rmse_cm"]["encoder patches"]
    assert set(errors) == {0, 5} and errors[0] != errors[5]


def test_probe_renders_the_difficulty_it_is_given(tmp_path):
    # The hard level spreads the reach goal over 45 x 50 x 25 cm instead of a 10 cm box, so
    # knowing nothing (predicting the mean) misses by much more there.
    errors = {}
    for level in ("benchmark", "hard"):
        out = tmp_path / f"{level}.json"
        args = ["probe", "encoder=vitn16", "env=reach", "scenes=24", "image_size=32", f"difficulty={level}"]
        assert main([*args, "compare_random=false", f"out={out}", "progress=false"]) == 0
        result = json.loads(out.read_text())
        assert result["difficulty"] == level
        errors[level] = result["rmse_cm"]["mean"]
    assert errors["hard"] > 2 * errors["benchmark"]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("env=nowhere", "unknown environment 'nowhere'"),
        ("scenes=6", "scenes=6 is too few for a 20% hold-out"),
        ("holdout=1.5", "holdout=1.5: give a fraction between 0 and 1"),
        ("camera=nope", "unknown camera 'nope'"),
        ("difficulty=easy", "difficulty='easy': choose benchmark or hard"),
        ("block=6", "block 6 does not exist: this encoder has blocks 0..5"),
        ("random_inits=0", "random_inits=0: give the number of random-initialised encoders to average"),
    ],
)
def test_probe_refuses_bad_input_in_one_line(tmp_path, capsys, option, message):
    out = tmp_path / "probe.json"
    args = ["probe", "encoder=vitn16", "env=reach", "scenes=24", "image_size=32", f"out={out}", "progress=false"]
    assert main([*args, option]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()
