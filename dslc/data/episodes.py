"""The `episodes` data source: batches played in a gymnasium environment by the policy being trained (REINFORCE).

Each batch is one update's episodes, played in lockstep (one forward pass per time step for all the episodes still
running), each action sampled from the softmax of the policy's scores. A batch holds every step played: the
observation, the action taken, and the discounted return from that step to the end of its episode (standardised over
the batch with `normalize`). Reproducible: episode k of the run resets its environment with a seed from (seed, k) and
the actions of update u are drawn from a generator seeded by (seed, u), so a run resumed at a checkpoint plays what
an uninterrupted one plays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from dslc.errors import error

Act = Callable[[dict[str, torch.Tensor]], torch.Tensor]  # {"observation": [n, ...]} -> scores [n, actions]


class Episodes:
    """The data source a generated script trains on; `play(act, device)` makes it iterable as the epochs' batches."""

    vocab = None  # what the export reads from a data set: no vocabulary, class names or preprocessing
    labels = None

    def __init__(
        self,
        env: str,
        seed: int,
        episodes_per_update: int = 10,
        updates_per_epoch: int = 10,
        gamma: float = 0.99,
        max_steps: int | None = None,
        normalize: bool = True,
    ):
        from dslc.extras import require

        gym = require("gymnasium", "the episodes data set")
        limit = {"max_episode_steps": max_steps} if max_steps else {}
        self.envs = [gym.make(env, **limit) for _ in range(episodes_per_update)]
        self.env, self.seed, self.gamma, self.normalize = env, seed, gamma, normalize
        self.per_update, self.updates = episodes_per_update, updates_per_epoch
        self.preprocess: dict[str, Any] = {}
        self.act: Act | None = None
        self.device = torch.device("cpu")
        self.returns: dict[int, list[float]] = {}  # epoch -> the returns of the episodes played in it

    def play(self, act: Act, device: torch.device) -> Episodes:
        """Batches from here on are played by `act` (the policy's scores for a batch of observations)."""
        self.act, self.device = act, device
        return self

    def __len__(self) -> int:
        return self.updates

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of `epoch`, from its update `start` on (a run resumed mid-epoch)."""
        for update in range(start, self.updates):
            yield self.batch(epoch, epoch * self.updates + update)

    def record(self, epoch: int) -> dict[str, float]:
        """What the epoch adds to its record: the mean return of the episodes it played."""
        returns = self.returns.get(epoch) or [float("nan")]
        return {"episode_return": float(np.mean(returns))}

    def batch(self, epoch: int, update: int) -> dict[str, torch.Tensor]:
        """Update `update`'s episodes (the run's update count), played with the current policy."""
        if self.act is None:
            raise RuntimeError("Episodes.play(act, device) comes before the batches")
        episodes = self.rollout(update)
        self.returns.setdefault(epoch, []).extend(sum(rewards) for _, _, rewards in episodes)
        returns = torch.from_numpy(np.concatenate([self.returns_to_go(rewards) for _, _, rewards in episodes]))
        if self.normalize:
            returns = (returns - returns.mean()) / (returns.std() + 1e-8) if len(returns) > 1 else returns * 0
        observations = np.asarray([o for obs, _, _ in episodes for o in obs], dtype=np.float32)
        actions = [a for _, acts, _ in episodes for a in acts]
        return {
            "observation": torch.from_numpy(observations).to(self.device),
            "action": torch.tensor(actions, dtype=torch.int64, device=self.device),
            "returns": returns.to(self.device),
        }

    def rollout(self, update: int) -> list[tuple[list[np.ndarray], list[int], list[float]]]:
        """The update's episodes, in lockstep: (observations, actions, rewards) of each, played on one CPU thread:
        thousands of forward passes over a few observations each, which more threads only slow down (measured on 2
        cores: 65 s instead of 9 s for specs/policy.model)."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._rollout(update)
        finally:
            torch.set_num_threads(threads)

    def _rollout(self, update: int) -> list[tuple[list[np.ndarray], list[int], list[float]]]:
        n = self.per_update
        observation = [env.reset(seed=self.episode_seed(update * n + i))[0] for i, env in enumerate(self.envs)]
        generator = torch.Generator().manual_seed(self.seed * 100_003 + update)
        episodes: list[tuple[list[np.ndarray], list[int], list[float]]] = [([], [], []) for _ in range(n)]
        running = list(range(n))
        while running:
            actions = self.sample(np.stack([observation[i] for i in running]), generator)
            still = []
            for i, action in zip(running, actions):
                obs, acts, rewards = episodes[i]
                obs.append(observation[i])
                acts.append(action)
                observation[i], reward, terminated, truncated, _ = self.envs[i].step(action)
                rewards.append(float(reward))
                if not (terminated or truncated):
                    still.append(i)
            running = still
        return episodes

    @torch.no_grad()
    def sample(self, observations: np.ndarray, generator: torch.Generator) -> list[int]:
        """One action per observation, drawn from the softmax of the policy's scores."""
        x = torch.as_tensor(observations, dtype=torch.float32, device=self.device)
        scores = self.act({"observation": x}).float().cpu()
        if not torch.isfinite(scores).all():
            raise error(None, "episodes: the policy's scores are not finite (NaN or inf): training diverged")
        return torch.multinomial(torch.softmax(scores, -1), 1, generator=generator)[:, 0].tolist()

    def episode_seed(self, episode: int) -> int:
        return (self.seed * 1_000_003 + episode) % 2**32

    def returns_to_go(self, rewards: list[float]) -> np.ndarray:
        out, running = np.zeros(len(rewards), dtype=np.float32), 0.0
        for t in reversed(range(len(rewards))):
            running = rewards[t] + self.gamma * running
            out[t] = running
        return out

    def close(self) -> None:
        for env in self.envs:
            env.close()
