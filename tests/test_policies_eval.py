"""Evaluating policies in simulation: the scripted expert through the same code, determinism
across runs and worker counts, result files (JSON, MP4, Rerun), compare, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest
from policies_helpers import IMAGE_SIZE, recorded_push, snapshot, train_args

from pixio_robot.cli import main
from pixio_robot.viz import rrd_entities


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    """A briefly trained CortexBench policy on the recorded push demonstrations."""
    dataset = recorded_push(tmp_path_factory)
    out = tmp_path_factory.mktemp("eval") / "run"
    assert main(train_args(dataset, out, "epochs=3", "batch_size=32")) == 0
    return out / "checkpoints/best"


def result(folder: Path) -> dict:
    return json.loads((folder / "result.json").read_text())


def test_wilson_interval():
    from policies import wilson_interval

    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(50, 50) == pytest.approx((0.9287, 1.0), abs=1e-4)


def test_two_proportion_test_by_hand():
    from policies import two_proportion_test

    # 43/50 against 42/50: pooled 0.85, sd sqrt(0.85 * 0.15 * 0.04) = 0.0714, z = 0.02 / 0.0714
    z, p = two_proportion_test(43, 50, 42, 50)
    assert z == pytest.approx(0.2801, abs=1e-3) and p == pytest.approx(0.7794, abs=1e-3)
    z, p = two_proportion_test(30, 100, 45, 100)  # a real gap: z = -2.19, p < 0.05
    assert z == pytest.approx(-2.1909, abs=1e-3) and p == pytest.approx(0.0285, abs=1e-3)
    assert two_proportion_test(50, 50, 50, 50) == (0.0, 1.0)  # no spread, no evidence
    with pytest.raises(ValueError):
        two_proportion_test(1, 0, 1, 10)


def test_scripted_expert_through_the_evaluation_code(tmp_path):
    out = tmp_path / "expert"
    args = ["eval-policy", "policy=expert", "env=push", f"image_size={IMAGE_SIZE}", "episodes=50", "workers=2"]
    assert main([*args, "videos=2", "record=1", f"out={out}", "progress=false"]) == 0
    r = result(out)
    assert r["episodes"] == 50 and r["seeds"] == [100000, 100049] and r["label"] == "expert"
    assert r["success_rate"] >= 0.98, r["success_rate"]
    lo, hi = r["ci95"]
    assert lo < r["success_rate"] <= hi
    assert [e["seed"] for e in r["per_episode"]] == list(range(100000, 100050))
    assert 0 < r["seconds_to_first_episode"] < r["seconds"] and r["episodes_per_minute_after_first"] > 0
    first = r["per_episode"][0]
    assert r["files"]["videos"] == ["videos/seed_100000.mp4", "videos/seed_100001.mp4"]
    with av.open(str(out / r["files"]["videos"][0])) as video:
        frames = list(video.decode(video.streams.video[0]))
    assert len(frames) == first["length"] and frames[0].width == IMAGE_SIZE
    assert {"/cameras/front", "/action/dx", "/state/tool_x", "/world/tool_path/episode_0"} <= rrd_entities(
        out / "episodes.rrd"
    )


def test_policy_evaluation_is_deterministic_and_independent_of_workers(policy, tmp_path):
    from policies import evaluate

    seeds = range(100000, 100002)
    one = evaluate(policy, seeds=seeds, workers=1, progress=False)
    again = evaluate(policy, seeds=seeds, workers=1, progress=False)
    two = evaluate(policy, seeds=seeds, workers=2, progress=False)
    assert one["per_episode"] == again["per_episode"] == two["per_episode"]
    assert one["env_name"] == "push" and one["label"] == "run/best"
    # the final tool pose depends on every action: equal rows mean equal action sequences
    finals = [e["final_state"] for e in one["per_episode"]]
    assert len(finals[0]) == 9 and finals[0] != finals[1]


def test_compare_writes_a_table_and_a_chart(policy, tmp_path, capsys):
    from policies import eval_policy

    a, b = tmp_path / "policy", tmp_path / "expert"
    r = eval_policy(policy=str(policy), episodes=2, videos=0, record=0, out=str(a), progress=False)
    assert r == result(a) and r["episodes"] == 2 and set(r) >= {"success_rate", "ci95", "mean_length"}
    assert main(["eval-policy", "policy=expert", "env=push", "episodes=2", "videos=0", "record=0", f"out={b}"]) == 0
    capsys.readouterr()
    assert main(["compare", str(a / "result.json"), str(b), f"out={tmp_path / 'chart.png'}"]) == 0
    table = (tmp_path / "chart.md").read_text()
    assert "| run/best | push | 2 |" in table and "| expert | push | 2 | 100.0% |" in table
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_is_refused_with_nothing_changed(policy, tmp_path, capsys):
    def refused(*args: str, match: str, out: Path) -> None:
        before = snapshot(out)
        assert main(["eval-policy", *args, f"out={out}", "progress=false"]) == 2
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1, err
        assert snapshot(out) == before

    out = tmp_path / "r"
    refused(f"policy={policy}", "env=metaworld/button-press-topdown", match="outputs 5-d actions", out=out)
    refused(f"policy={policy}", "env=pick_place", match="the policy was made for push", out=out)
    refused(f"policy={tmp_path}", match="not a saved policy", out=out)
    refused("policy=expert", match="policy=expert needs env=", out=out)
    assert not out.exists()
    assert main(["eval-policy", "policy=expert", "env=push", "episodes=1", f"out={out}", "progress=false"]) == 0
    refused("policy=expert", "env=push", "episodes=1", match="already holds a result", out=out)
    capsys.readouterr()
    # The policy's config names its environment; a dataset of another one is refused at training too.
    config = json.loads((policy / "config.json").read_text())
    assert config["env"]["id"] == "pixio_robot/Push-v0"


def test_a_small_policy_beats_a_constant_policy_in_closed_loop(tmp_path):
    """30 reach demonstrations at 128 px, the keypoint head on the bundled encoder for a few
    epochs: in closed loop it reaches the goal clearly more often than the dataset's mean action."""

    import envs
    from policies import Demonstrations, evaluate

    data, run = tmp_path / "reach", tmp_path / "run"
    collect = ["collect", "env=reach", "image_size=128", "episodes=30", "workers=2", f"out={data}"]
    assert main([*collect, "progress=false"]) == 0
    train = ["train-policy", f"dataset={data}", "encoder=sim_vitn16", "head=keypoints", "epochs=60", "batch_size=64"]
    assert main([*train, f"out={run}", "progress=false"]) == 0
    seeds = range(100000, 100010)
    learned = evaluate(run / "checkpoints/best", seeds=seeds, workers=2, progress=False)

    mean_action = Demonstrations.load(data).actions.mean(0)
    env = envs.dataset_spec(data).make()
    constant = 0
    for seed in seeds:
        env.reset(seed=seed)
        for _ in range(env.unwrapped.max_episode_steps):
            *_, terminated, truncated, info = env.step(mean_action)
            if terminated or truncated:
                break
        constant += bool(info["is_success"])
    env.close()
    print(f"closed loop on 10 held-out seeds: learned {learned['successes']}, mean action {constant}")
    assert learned["successes"] >= constant + 3, (learned["successes"], constant)
