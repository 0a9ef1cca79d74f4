"""Train specs/policy.model on CartPole with REINFORCE, export it, and evaluate the exported policy
with the dslc runtime in the environment.

A `train { }` section describes supervised training on a data set; a reinforcement-learning loop
(act in an environment, then learn from the episode returns) is not one, so it is written here in
plain PyTorch around the model code that `dslc` generates:

1. `dslc.build.write_python` writes `policy.py` (the same code `dslc build` writes) and the script
   imports its `MODELS["policy"]`;
2. REINFORCE: each update plays a batch of episodes with the stochastic policy (actions sampled
   from softmax(logits)), computes discounted returns-to-go, normalises them over the batch and
   minimises -sum(log pi(a_t | s_t) * G_t) with Adam;
3. `dslc.build.build(..., state_dicts=...)` exports the trained weights to `policy.onnx`, verified
   against PyTorch in onnxruntime, with `manifest.json`;
4. the evaluation loads that folder with `dslc_runtime.Model` (onnxruntime and numpy, no torch) and
   plays CartPole-v1 greedily (argmax of `logits`); CartPole counts as solved at an average return
   of at least 195 over 100 episodes.

    pip install gymnasium                      # or: pip install -e '.[data]'
    python examples/policy_cartpole.py --out runs/policy_cartpole
    python examples/policy_cartpole.py --out /tmp/p --updates 3 --eval-episodes 5   # a smoke run

Writes OUT/policy.py, OUT/policy.onnx, OUT/manifest.json, OUT/policy.safetensors and
OUT/metrics.jsonl (one line per update: mean training return and loss), and prints a JSON summary
(the last line of the output). Runs offline on a CPU in well under a minute.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "policy.model"
SOLVED = 195.0  # CartPole's classic criterion: average return over 100 consecutive episodes


def make_env(seed: int):
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env


def play(env, act, seed: int | None = None) -> tuple[list[np.ndarray], list[int], list[float]]:
    """One episode: observations, actions and rewards."""
    obs, _ = env.reset(seed=seed)
    observations, actions, rewards = [], [], []
    done = False
    while not done:
        action = act(obs)
        observations.append(obs)
        actions.append(action)
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(float(reward))
        done = terminated or truncated
    return observations, actions, rewards


def returns_to_go(rewards: list[float], gamma: float) -> np.ndarray:
    out, running = np.zeros(len(rewards), dtype=np.float32), 0.0
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def train(policy: torch.nn.Module, args: argparse.Namespace, log) -> list[dict]:
    env = make_env(args.seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)

    @torch.no_grad()
    def act(obs: np.ndarray) -> int:
        logits, _ = policy(torch.as_tensor(obs, dtype=torch.float32)[None])  # outputs: logits, probabilities
        probs = torch.softmax(logits[0], -1)
        return int(torch.multinomial(probs, 1, generator=generator))

    history: list[dict] = []
    for update in range(args.updates):
        batch_obs, batch_actions, batch_returns, episode_returns = [], [], [], []
        for _ in range(args.episodes):
            observations, actions, rewards = play(env, act)
            batch_obs += observations
            batch_actions += actions
            batch_returns.append(returns_to_go(rewards, args.gamma))
            episode_returns.append(sum(rewards))
        returns = torch.from_numpy(np.concatenate(batch_returns))
        returns = (returns - returns.mean()) / (returns.std() + 1e-8)  # a baseline and a scale
        logits, _ = policy(torch.as_tensor(np.array(batch_obs), dtype=torch.float32))
        log_probs = torch.log_softmax(logits, -1).gather(1, torch.as_tensor(batch_actions)[:, None])[:, 0]
        loss = -(log_probs * returns).sum() / args.episodes
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        record = {"update": update + 1, "mean_return": float(np.mean(episode_returns)), "loss": float(loss.detach())}
        history.append(record)
        log(f"update {update + 1}/{args.updates}  mean return {record['mean_return']:.1f}  loss {record['loss']:.3f}")
        recent = [r["mean_return"] for r in history[-args.patience :]]
        if len(recent) == args.patience and min(recent) >= args.stop_at:
            log(f"stopping: the mean training return stayed >= {args.stop_at} for {args.patience} updates")
            break
    env.close()
    return history


def evaluate(out: Path, episodes: int, seed: int) -> list[float]:
    """Greedy episodes with the exported ONNX policy, run by the dslc runtime (no torch)."""
    from dslc_runtime import Model

    model = Model.load(out, model="policy", providers="cpu")
    env = make_env(seed)

    def act(obs: np.ndarray) -> int:
        return int(np.argmax(model(observation=obs[None].astype(np.float32))["logits"][0]))

    returns = [sum(play(env, act, seed=seed + i)[2]) for i in range(episodes)]
    env.close()
    return returns


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("runs/policy_cartpole"), help="output folder")
    p.add_argument("--updates", type=int, default=150, help="policy-gradient updates at most")
    p.add_argument("--episodes", type=int, default=10, help="episodes per update")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument(
        "--stop-at", type=float, default=450.0, help="stop once the mean training return stays at least this"
    )
    p.add_argument("--patience", type=int, default=3, help="... for this many updates")
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    from safetensors.torch import save_file

    from dslc.build import build, load_generated, write_python

    def log(text: str) -> None:
        if not args.quiet:
            print(text, flush=True)

    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    write_python(SPEC, args.out / "policy.py")  # the model code `dslc build` writes
    generated = load_generated(args.out / "policy.py")
    policy = generated.MODELS["policy"]()

    start = time.perf_counter()
    history = train(policy, args, log)
    seconds = time.perf_counter() - start
    (args.out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))

    state = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    save_file(state, str(args.out / "policy.safetensors"))
    result = build(SPEC, args.out, state_dicts={"policy": state})  # verified against PyTorch in onnxruntime
    report = result.models[0]
    log(
        f"wrote {args.out / report.onnx}: {report.nodes} nodes, verified: {report.verified} (max abs diff {report.max_abs_diff:.1e})"
    )

    returns = evaluate(args.out, args.eval_episodes, seed=10_000 + args.seed) if args.eval_episodes else []
    summary = {
        "updates": len(history),
        "episodes": len(history) * args.episodes,
        "train_seconds": round(seconds, 1),
        "first_mean_return": history[0]["mean_return"] if history else None,
        "last_mean_return": history[-1]["mean_return"] if history else None,
        "eval_episodes": len(returns),
        "eval_mean_return": float(np.mean(returns)) if returns else None,
        "solved": bool(returns) and float(np.mean(returns)) >= SOLVED,
        "onnx": str(args.out / report.onnx),
        "verified": report.verified,
        "max_abs_diff": report.max_abs_diff,
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
