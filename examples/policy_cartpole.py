"""Train specs/policy.model on CartPole with REINFORCE through `dslc train`, then evaluate the exported policy with
the dslc runtime in the environment.

The spec's train section does the reinforcement learning: its `episodes` data set plays each update's episodes in
gymnasium's CartPole-v1 with the current policy (actions sampled from softmax(logits)) and gives the observations, the
actions taken and their discounted returns (standardised over the batch); `reinforce(logits, action, returns)` is
-mean(log pi(a_t | s_t) * G_t), minimised with Adam; training stops once an epoch's 100 episodes average
`stop_at = 475` (gymnasium's threshold for CartPole-v1). This script

1. runs `dslc train specs/policy.model` (flags below become `--set` values), which writes the run folder: model code,
   training script, metrics.jsonl (one line per epoch: train_loss, episode_return), policy.safetensors, and
   policy.onnx verified against PyTorch in onnxruntime, with manifest.json;
2. loads that folder with `dslc_runtime.Model` (onnxruntime and numpy, no torch) and plays CartPole-v1 greedily
   (argmax of `logits`); CartPole-v1 counts as solved at an average return of at least 475 over 100 episodes.

    pip install gymnasium                      # or: pip install -e '.[data]'
    python examples/policy_cartpole.py --out runs/policy_cartpole
    python examples/policy_cartpole.py --out /tmp/p --epochs 2 --updates-per-epoch 1 --eval-episodes 5   # a smoke run

Prints a JSON summary (the last line of the output). Runs offline on a CPU in about a minute.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "policy.model"
SOLVED = 475.0  # gymnasium's reward_threshold of CartPole-v1: the average return over 100 consecutive episodes


def play(env, act, seed: int) -> float:
    """One episode's return."""
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(act(obs))
        total, done = total + float(reward), terminated or truncated
    return total


def evaluate(out: Path, episodes: int, seed: int) -> list[float]:
    """Greedy episodes with the exported ONNX policy, run by the dslc runtime (no torch)."""
    import gymnasium as gym
    from dslc_runtime import Model

    model = Model.load(out, model="policy", providers="cpu")
    env = gym.make("CartPole-v1")

    def act(obs: np.ndarray) -> int:
        return int(np.argmax(model(observation=obs[None].astype(np.float32))["logits"][0]))

    returns = [play(env, act, seed=seed + i) for i in range(episodes)]
    env.close()
    return returns


def train_args(args: argparse.Namespace) -> list[str]:
    """The `dslc train` command line for these flags."""
    settings = {
        "data.episodes_per_update": args.episodes,
        "data.updates_per_epoch": args.updates_per_epoch,
        "data.gamma": args.gamma,
        "optimizer.lr": args.lr,
        "stop_at": args.stop_at,
    }
    sets = [x for key, value in settings.items() for x in ("--set", f"{key}={value}")]
    flags = ["--out", str(args.out), "--epochs", str(args.epochs), "--seed", str(args.seed), "--no-tensorboard"]
    return ["train", str(SPEC), *flags, *sets, *(["--quiet"] if args.quiet else [])]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("runs/policy_cartpole"), help="output folder (the run folder)")
    p.add_argument("--epochs", type=int, default=30, help="epochs at most")
    p.add_argument("--updates-per-epoch", type=int, default=10, help="policy-gradient updates per epoch")
    p.add_argument("--episodes", type=int, default=10, help="episodes per update")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--stop-at", type=float, default=SOLVED, help="stop once an epoch's mean return reaches this")
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    from dslc.cli import main as dslc

    start = time.perf_counter()
    dslc(train_args(args), standalone_mode=False)  # dslc train: trains, exports, verifies
    seconds = time.perf_counter() - start
    history = [json.loads(line) for line in (args.out / "metrics.jsonl").read_text().splitlines()]
    manifest = json.loads((args.out / "manifest.json").read_text())
    (report,) = manifest["models"]

    returns = evaluate(args.out, args.eval_episodes, seed=10_000 + args.seed) if args.eval_episodes else []
    summary = {
        "epochs": len(history),
        "updates": len(history) * args.updates_per_epoch,
        "episodes": len(history) * args.updates_per_epoch * args.episodes,
        "train_seconds": round(seconds, 1),
        "first_mean_return": history[0]["episode_return"] if history else None,
        "last_mean_return": history[-1]["episode_return"] if history else None,
        "eval_episodes": len(returns),
        "eval_mean_return": float(np.mean(returns)) if returns else None,
        "solved": bool(returns) and float(np.mean(returns)) >= SOLVED,
        "onnx": str(args.out / report["onnx"]),
        "verified": report["verified"],
        "max_abs_diff": report.get("max_abs_diff"),
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
