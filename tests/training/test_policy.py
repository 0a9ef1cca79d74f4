"""specs/policy.model trains from its train section: REINFORCE on gymnasium's CartPole-v1 through the `episodes` data
set and the `reinforce` loss, reproducibly, until `stop_at`; its mistakes are located check errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dslc.checker import check_file
from dslc.cli import main
from dslc.errors import DslcError
from dslc.training.history import History

pytest.importorskip("gymnasium")

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "policy.model"
SOLVED = 475.0  # gymnasium's reward_threshold of CartPole-v1: the average return over 100 consecutive episodes
RANDOM_POLICY = 22.0  # a uniformly random policy's mean return on CartPole-v1


def train(out: Path, *args: str) -> list[dict]:
    sys.modules.pop("policy", None)  # the run folder's model module is imported by its stem
    try:
        result = CliRunner().invoke(main, ["train", str(SPEC), "--out", str(out), "--quiet", "--no-tensorboard", *args])
    finally:
        sys.modules.pop("policy", None)
    assert result.exit_code == 0, result.output + (repr(result.exception) if result.exception else "")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def greedy_returns(folder: Path, episodes: int, seed: int = 10_000) -> list[float]:
    """Greedy episodes (argmax of `logits`) of the exported ONNX policy, run by dslc_runtime (no torch)."""
    import gymnasium as gym
    from dslc_runtime import Model

    model = Model.load(folder, model="policy", providers="cpu")
    env = gym.make("CartPole-v1")
    returns = []
    for i in range(episodes):
        observation, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            action = int(np.argmax(model(observation=observation[None].astype(np.float32))["logits"][0]))
            observation, reward, terminated, truncated, _ = env.step(action)
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    env.close()
    return returns


def test_a_few_updates_raise_the_return_reproducibly(tmp_path):
    """Two epochs of 10 updates (200 episodes): the second epoch's episodes last about twice as long as a random
    policy's (measured: 23.0, then 59.3); a second run with the same seed plays and learns exactly the same."""
    args = ("--epochs", "2")
    first, again = train(tmp_path / "a", *args), train(tmp_path / "b", *args)
    assert [r["episode_return"] for r in first] == [r["episode_return"] for r in again]
    assert (tmp_path / "a" / "policy.safetensors").read_bytes() == (tmp_path / "b" / "policy.safetensors").read_bytes()
    assert first[-1]["episode_return"] > max(first[0]["episode_return"], RANDOM_POLICY) + 18, first
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert [m["verified"] for m in manifest["models"]] == [True]
    assert min(greedy_returns(tmp_path / "a", 3)) >= 8  # the exported graph plays: CartPole lasts >= 8 steps


def test_a_resumed_run_plays_and_learns_what_an_uninterrupted_one_does(tmp_path):
    """Resumed from epoch 2's checkpoint (epoch 3's removed), epoch 3 plays the same episodes: same record, same
    weights."""
    args = ("--epochs", "3", "--set", "data.updates_per_epoch=2")
    whole = train(tmp_path, *args)
    weights = (tmp_path / "policy.safetensors").read_bytes()
    (tmp_path / "checkpoints" / "epoch-0003.safetensors").unlink()
    resumed = train(tmp_path, *args, "--resume")
    assert [r["episode_return"] for r in resumed] == [r["episode_return"] for r in whole]
    assert (tmp_path / "policy.safetensors").read_bytes() == weights


def test_another_seed_plays_other_episodes(tmp_path):
    args = ("--epochs", "1", "--set", "data.updates_per_epoch=2")
    assert (
        train(tmp_path / "a", *args)[0]["episode_return"]
        != train(tmp_path / "b", *args, "--seed", "1")[0]["episode_return"]
    )


@pytest.mark.slow
def test_policy_trains_to_the_solved_threshold_and_its_onnx_solves_cartpole(tmp_path):
    """The spec as written: training stops once an epoch's 100 episodes average 475 (measured: 8 epochs, 800
    episodes); the exported ONNX, run by dslc_runtime, averages at least 475 over 100 greedy episodes (measured:
    500.0)."""
    history = train(tmp_path / "run")
    assert history[-1]["episode_return"] >= SOLVED and len(history) < 30, history
    returns = greedy_returns(tmp_path / "run", 100)
    assert np.mean(returns) >= SOLVED, (np.mean(returns), min(returns))


# ---------------------------------------------------------------- checked at compile time

MODEL = """model policy {{
    input observation: float32[batch, 4]
    output logits = observation -> Linear(16) -> ReLU -> Linear({actions})
}}
train {{
    data = {data}
    loss = {loss}{extra}
}}
"""


def check_error(tmp_path: Path, data: str, loss="reinforce(logits, action, returns)", actions=2, extra="") -> str:
    spec = tmp_path / "p.model"
    spec.write_text(MODEL.format(data=data, loss=loss, actions=actions, extra=extra))
    with pytest.raises(DslcError) as info:
        check_file(spec)
    return info.value.render()


@pytest.mark.parametrize(
    ("data", "loss", "actions", "extra", "expected"),
    [
        (
            'episodes(env="CartPole-v1", policy=logits)',
            "reinforce(logits, action, returns)",
            3,
            "",
            "p.model:6:47: error: episodes: policy 'logits' is float32[batch, 3], but CartPole-v1 needs one score per "
            "action",
        ),
        ('episodes(env="CartPol-v1")', None, 2, "", "did you mean 'CartPole-v1'"),
        ('episodes(env="Pendulum-v1")', None, 2, "", "the policy samples discrete actions"),
        ('episodes(env="CartPole-v1", policy=logit)', None, 2, "", "p.model:6:47: error: unknown name 'logit'"),
        ('episodes(env="CartPole-v1", policy=observation)', None, 2, "", "policy 'observation' must be a model output"),
        ('episodes(env="CartPole-v1")', "reinforce(logits, returns, action)", 2, "", "'action' must be an integer"),
        ('episodes(env="CartPole-v1")', "reinforce(logits, action, returns[:3])", 2, "", "'returns' must be float"),
        ('episodes(env="CartPole-v1")', None, 2, "\n    batch_size = 64", "'batch_size' does not apply to episodes"),
        ('episodes(env="CartPole-v1")', None, 2, "\n    metrics = [accuracy]", "'metrics' does not apply"),
        ('episodes(env="CartPole-v1", validation=0.1)', None, 2, "", "episodes has no argument 'validation'"),
        ('episodes(env="CartPole-v1")', None, 2, '\n    monitor = "episode_retrun"', "did you mean 'episode_return'"),
    ],
)
def test_mistakes_are_located_check_errors(tmp_path, data, loss, actions, extra, expected):
    text = check_error(tmp_path, data, loss or "reinforce(logits, action, returns)", actions, extra)
    assert expected in text, text
    assert "Traceback" not in text and "^" in text


def test_the_episode_return_is_the_default_monitor_and_rises(tmp_path):
    spec = tmp_path / "p.model"
    spec.write_text(
        MODEL.format(
            data='episodes(env="CartPole-v1")',
            loss="reinforce(logits, action, returns)",
            actions=2,
            extra="\n    stop_at = 100.0",
        )
    )
    cfg = check_file(spec).train
    assert (cfg.monitor, cfg.monitor_mode, cfg.settings["stop_at"]) == ("episode_return", "max", 100.0)
    assert "validation" not in cfg.data.options


def test_stop_at_stops_once_the_monitor_reaches_it():
    rising, falling = History("episode_return", "max", stop_at=475.0), History("val_loss", "min", stop_at=0.1)
    for value in (100.0, 474.9):
        rising.records.append({"episode_return": value})
        assert not rising.should_stop()
    rising.records.append({"episode_return": 475.0})
    assert rising.should_stop() and rising.reached()
    falling.records.append({"val_loss": 0.2})
    assert not falling.should_stop()
    falling.records.append({"val_loss": 0.1})
    assert falling.should_stop()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_the_reinforce_loss_is_the_policy_gradient_of_the_actions_taken(tmp_path, reduction):
    """The generated step computes -reduce(log softmax(logits)[action] * returns), and its act() returns the logits."""
    import torch

    from dslc.build import load_generated
    from dslc.emit_torch import emit_program
    from dslc.emit_train import emit_train_script

    spec = tmp_path / "p.model"
    loss = f'reinforce(logits, action, returns, reduction="{reduction}")'
    spec.write_text(MODEL.format(data='episodes(env="CartPole-v1")', loss=loss, actions=2, extra=""))
    program = check_file(spec)
    (tmp_path / "p.py").write_text(emit_program(program))
    (tmp_path / "p_train.py").write_text(emit_train_script(program))
    sys.modules.pop("p", None)
    script = load_generated(tmp_path / "p_train.py")
    torch.manual_seed(0)
    models = {"policy": script.MODELS["policy"]()}
    batch = {"observation": torch.randn(5, 4), "action": torch.tensor([0, 1, 1, 0, 1]), "returns": torch.randn(5)}
    logits = models["policy"](batch["observation"])
    chosen = torch.log_softmax(logits, -1)[torch.arange(5), batch["action"]]
    expected = -(chosen * batch["returns"])
    torch.testing.assert_close(script.step_train(models, batch)[0], getattr(expected, reduction)())
    torch.testing.assert_close(script.act(models, {"observation": batch["observation"]}), logits)
