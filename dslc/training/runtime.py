"""What a generated training script imports besides PyTorch: command-line flags, the run folder,
devices and processes, batching, checkpoints and resuming, progress output, and the final export.

The training step, losses, optimizers and the loop itself stay in the generated script.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dslc import __version__
from dslc.errors import DslcError, error
from dslc.fileio import (
    FolderBusyError,
    folder_locked,
    lock_folder,
    make_folder,
    remove_debris,
    unlock_folder,
    write_atomic,
)
from dslc.training import checkpoint as ckpt
from dslc.training.curves import plot

LOG_EVERY = 10  # steps between progress updates (each reads the loss, a device sync)
BEST = "best.safetensors"  # checkpoints/best.safetensors: the best epoch's weights by `monitor` (early stopping)
# set by `dslc train --nproc N` for its processes: the pid of that command, which holds the run folder's lock for them
LOCK_HOLDER_ENV = "DSLC_RUN_LOCK_HOLDER"


def parse_args(argv: list[str] | None, config: dict[str, Any], default_out: Path) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the models of a dslc spec (generated script).")
    p.add_argument("--out", type=Path, default=default_out, help="run folder (default: this script's folder)")
    p.add_argument("--epochs", type=int, default=config["epochs"])
    p.add_argument("--batch-size", type=int, default=config["batch_size"])
    p.add_argument("--seed", type=int, default=config["seed"])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument(
        "--amp", action="store_true", help="mixed precision: bf16 autocast (fp16 + loss scaling on GPUs without bf16)"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the trained models")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="[MODEL=]FILE",
        help="load a .safetensors/.pth state dict (strict) before training; --epochs 0 only exports it",
    )
    args = p.parse_args(argv)
    for key in ("epochs", "batch_size"):
        if getattr(args, key) < (0 if key == "epochs" else 1):
            raise error(None, f"--{key.replace('_', '-')} must be at least {0 if key == 'epochs' else 1}")
    return args


def run_script(main) -> None:
    """Entry point of a generated script: dslc errors as messages, not tracebacks."""
    try:
        main()
    except DslcError as exc:
        print(exc.render(), file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


@contextlib.contextmanager
def run_folder_locked(folder: Path) -> Iterator[None]:
    """Hold the run folder's lock for the block (`dslc train`: writing the scripts, then training); a second run into
    the same folder stops with an error naming the holder."""
    try:
        with folder_locked(folder):
            yield
    except FolderBusyError as busy:
        raise folder_in_use(folder, busy.pid) from None


def folder_in_use(folder: Path, pid: int | None) -> DslcError:
    return error(
        None,
        f"run folder {folder} is in use by another run (pid {pid if pid is not None else 'unknown'})",
        "wait for that run to end, or choose another --out",
    )


def _alive(pid: int) -> bool:
    """Whether process `pid` exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    return True


class Totals:
    """Sums and counts for averages; tensors are summed on the device and read once at the end."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, float] = {}

    def add(self, key: str, total: Any, count: Any) -> None:
        total = total.detach().double() if isinstance(total, torch.Tensor) else float(total)
        self.sums[key] = self.sums.get(key, 0.0) + total
        self.counts[key] = self.counts.get(key, 0.0) + float(count)

    def mean(self, key: str) -> float:
        return float(self.sums[key]) / max(self.counts[key], 1.0)


def ctc_char_errors(
    scores: torch.Tensor,
    target: torch.Tensor,
    input_lengths: torch.Tensor | None = None,
    target_lengths: torch.Tensor | None = None,
    blank: int = 0,
) -> int:
    """Edit distance, summed over the batch, between the greedy CTC decoding of `scores` [batch, time, classes]
    (best class per frame, repeats merged, blanks dropped) and the padded `target` [batch, length] (the cer metric)."""
    best = scores.argmax(-1).cpu().tolist()
    refs = target.cpu().tolist()
    frames = input_lengths.cpu().tolist() if input_lengths is not None else [len(best[0]) if best else 0] * len(best)
    chars = target_lengths.cpu().tolist() if target_lengths is not None else None
    errors = 0
    for b, path in enumerate(best):
        path = path[: frames[b]]
        decoded = [k for i, k in enumerate(path) if k != blank and (i == 0 or k != path[i - 1])]
        ref = refs[b][: chars[b]] if chars is not None else [k for k in refs[b] if k != blank]
        errors += edit_distance(decoded, ref)
    return errors


def edit_distance(a: list[int], b: list[int]) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def match_state(
    target: dict[str, torch.Tensor], sources: dict[str, dict[str, torch.Tensor]]
) -> tuple[dict[str, torch.Tensor] | None, list[str], str]:
    """The trained tensor for every key of `target` (same name, shape and dtype, in exactly one trained model or equal
    in all that have it): (state dict, the trained models it comes from, ""), or (None, [], why not)."""
    found: dict[str, torch.Tensor] = {}
    origins: list[str] = []
    missing, mismatched, ambiguous = [], [], []
    for key, value in target.items():
        hits = [(src, state[key]) for src, state in sources.items() if key in state]
        same = [(src, t) for src, t in hits if t.shape == value.shape and t.dtype == value.dtype]
        if not hits:
            missing.append(key)
        elif not same:
            src, t = hits[0]
            mismatched.append(
                f"{key} is {list(value.shape)} {str(value.dtype).removeprefix('torch.')} here but "
                f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')} in {src}"
            )
        elif any(not torch.equal(same[0][1], t) for _, t in same[1:]):
            ambiguous.append(f"{key} (in {', '.join(src for src, _ in same)})")
        else:
            found[key] = same[0][1]
            if same[0][0] not in origins:
                origins.append(same[0][0])
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} of its {len(target)} parameters/buffers have no trained counterpart in "
            f"{', '.join(sources) or 'no trained model'} ({_some(missing)})"
        )
    if mismatched:
        problems.append(f"{len(mismatched)} differ in shape or dtype ({_some(mismatched)})")
    if ambiguous:
        problems.append(f"{len(ambiguous)} have different trained values in several models ({_some(ambiguous)})")
    if problems:
        return None, [], "; ".join(problems)
    return found, origins, ""


def _some(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f", ... {len(items) - n} more" if len(items) > n else "")


class Batches:
    """In-memory batching: a seeded permutation per epoch (the same in every process and on
    resume); with several processes each takes its share of every global batch."""

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        batch_size: int,
        shuffle: bool,
        seed: int,
        rank: int,
        world: int,
        device: torch.device,
        workers: int,
    ):
        if not tensors or len(next(iter(tensors.values()))) == 0:
            raise error(None, "the data split is empty", "lower `validation` or provide more examples")
        self.n = len(next(iter(tensors.values())))
        self.batch_size, self.shuffle, self.seed, self.rank, self.world = batch_size, shuffle, seed, rank, world
        self.workers, self.device = workers, device
        # small data sets live on the device: indexing there is faster than any loader
        self.tensors = tensors if workers else {k: v.to(device) for k, v in tensors.items()}

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self):
        return self.epoch(0)

    def indices(self, epoch: int, device: torch.device | None = None) -> list[torch.Tensor]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        else:
            order = torch.arange(self.n)
        if device is not None:
            order = order.to(device)  # one copy per epoch, not one per batch
        chunks = list(order.split(self.batch_size))
        if self.world > 1:
            chunks = [c.tensor_split(self.world)[self.rank] for c in chunks]
        return chunks

    def epoch(self, epoch: int):
        if not self.workers:
            tensors = self.tensors
            for idx in self.indices(epoch, self.device):
                yield {k: v[idx] for k, v in tensors.items()}
            return
        chunks = self.indices(epoch)
        loader = torch.utils.data.DataLoader(
            chunks,
            batch_size=None,
            num_workers=self.workers,
            collate_fn=lambda idx: {k: v[idx] for k, v in self.tensors.items()},
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for batch in loader:
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}


class Run:
    """One training run: its folder, device, processes, checkpoints and output."""

    def __init__(self, args: argparse.Namespace, spec: dict[str, Any], config: dict[str, Any], steps: int = 1):
        self.args, self.spec = args, spec
        self.config = {**config, "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed}
        self.out = Path(args.out)
        self.ckpt_dir = self.out / "checkpoints"
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.main = self.rank == 0
        self.device = self._device(args.device)
        if self.world > 1:
            if steps > 1:
                raise error(
                    None, "several processes (--nproc / torchrun) support one training step; this spec alternates steps"
                )
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.amp_dtype = None
        if args.amp:
            cuda_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
            self.amp_dtype = torch.bfloat16 if self.device.type == "cpu" or cuda_bf16 else torch.float16
        self.history: list[dict[str, Any]] = []
        self.state: dict[str, Any] = {}
        self.models: dict[str, nn.Module] = {}
        self.weights: dict[str, str] = {}  # model -> where its exported weights come from (manifest "weights")
        self.loaded: set[str] = set()  # models given weights with --weights
        self.exported_record: dict[str, Any] | None = None  # the epoch whose weights are exported
        self.console = None
        self.bar = None
        self.owns_lock = False  # this Run took the run folder's lock (and releases it when done)
        if self.main:
            self._take_run_folder()
            existing = ckpt.checkpoints(self.ckpt_dir)
            if existing and not args.resume:
                raise error(
                    None,
                    f"{self.out} already holds a run ({existing[-1].name})",
                    "pass --resume to continue it, or choose another --out",
                )
            if not args.resume or not existing:
                write_atomic(self.out / "config.json", json.dumps(self._config_json(), indent=2) + "\n")
        self.interactive = self.main and sys.stdout.isatty() and not args.quiet
        torch.manual_seed(args.seed)

    def _take_run_folder(self) -> None:
        """Lock the run folder (rank 0), then remove what an interrupted write left there."""
        make_folder(self.out)
        self._hold_run_folder()
        removed = remove_debris(self.out) + remove_debris(self.ckpt_dir)
        if removed:
            names = ", ".join(str(p.relative_to(self.out)) for p in removed)
            self.log(f"removed {len(removed)} leftover(s) of an interrupted write: {names}")

    def _hold_run_folder(self) -> None:
        """Rank 0 alone writes the run folder, holding its lock (the kernel drops it when the process ends, kill -9
        included); called before each write. Under `dslc train` the command holds the lock already: in this process,
        or as the launcher of these processes (LOCK_HOLDER_ENV). When that launcher is killed and these processes live
        on, rank 0 takes the lock over, or stops if another run has taken the folder meanwhile."""
        if self.owns_lock:
            return
        try:
            self.owns_lock = lock_folder(self.out)
        except FolderBusyError as busy:
            launcher = busy.pid is not None and str(busy.pid) == os.environ.get(LOCK_HOLDER_ENV)
            if not (launcher and _alive(busy.pid)):
                self._stop_bar()
                raise folder_in_use(self.out, busy.pid) from None

    def _device(self, choice: str) -> torch.device:
        if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise error(None, "--device cuda: no CUDA device is available")
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
        return torch.device("cpu")

    def _config_json(self) -> dict[str, Any]:
        return {"dslc_version": __version__, "spec": self.spec, "train": self.config, "world_size": self.world}

    def log(self, text: str) -> None:
        if not self.main:
            return
        if self.console is not None:
            self.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    # ------------------------------------------------------------ setup

    def batches(
        self, tensors: dict[str, torch.Tensor], batch_size: int, shuffle: bool, workers: int = 0, split: bool = True
    ) -> Batches:
        return Batches(
            tensors,
            batch_size,
            shuffle,
            self.args.seed,
            self.rank if split else 0,
            self.world if split else 1,
            self.device,
            workers,
        )

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, needed only for float16 autocast; otherwise a pass-through."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def restore(self, models: dict[str, nn.Module], steps: dict[str, tuple[Any, Any, Any]]) -> int:
        """Remember what a checkpoint holds; with --resume load the newest usable one (a damaged newer one is skipped,
        with a warning). Returns the first epoch to run."""
        self.models, self.state = models, steps
        latest = ckpt.load_latest(self.ckpt_dir) if self.args.resume else None
        if latest is None:
            if self.args.resume:
                self.log(f"no checkpoint in {self.ckpt_dir}: starting from the beginning")
            if getattr(self.args, "weights", None):  # --weights: a checkpoint to start from (dslc/training/weights.py)
                self._load_weights(models)
            return 0
        path, (weights, state, meta), refused = latest
        for bad in refused:
            self.log(f"warning: checkpoint {bad.path} {bad.reason}: resuming from {path.name} instead")
        self._check_compatible(path, meta)
        if getattr(self.args, "weights", None):
            raise error(
                None,
                f"--weights cannot be combined with --resume: {path} holds the weights to continue from",
                "drop --weights to continue the run, or start a new run with another --out",
            )
        self._load_checkpoint(path, weights, state, models, steps)
        self.history = meta["history"]
        if self.main:
            self._write_metrics()
        self.log(f"resumed from {path} (epoch {meta['epoch']})")
        return meta["epoch"]

    def _load_weights(self, models: dict[str, nn.Module]) -> None:
        from dslc.training.weights import load_weights

        versions = {n: [t._version for t in m.state_dict().values()] for n, m in models.items()}
        for line in load_weights(self.args.weights, models):
            self.log(line)
        # models given weights explicitly keep them (share_trained_weights leaves them alone)
        self.loaded = {n for n, m in models.items() if [t._version for t in m.state_dict().values()] != versions[n]}

    def _load_checkpoint(
        self,
        path: Path,
        weights: dict[str, dict[str, torch.Tensor]],
        state: dict[str, Any],
        models: dict[str, nn.Module],
        steps: dict[str, tuple[Any, Any, Any]],
    ) -> None:
        """Models, optimizers, schedulers, loss scalers and RNG from a checkpoint of this run (checked before); what
        does not fit is an error naming the checkpoint and the part."""
        part = ""
        try:
            for name, model in models.items():
                part = f"the weights of model '{name}'"
                model.load_state_dict(weights[name])
            for name, (optimizer, scheduler, scaler) in steps.items():
                part = f"the optimizer state of step '{name}'"
                saved = state["steps"][name]
                optimizer.load_state_dict(saved["optimizer"])
                if scheduler is not None:
                    scheduler.load_state_dict(saved["scheduler"])
                scaler.load_state_dict(saved["scaler"])
            part = "the random number generator state"
            torch.set_rng_state(state["rng"]["torch"])
            if torch.cuda.is_available() and state["rng"].get("cuda"):
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:200]
            raise error(
                None,
                f"cannot resume from {path}: {part} does not fit ({detail})",
                "was it written by another version of dslc? start a new run with another --out",
            ) from None

    def _identity(self) -> dict[str, Any]:
        """What a resumed run must match (recorded in every epoch checkpoint)."""
        overrides = self.spec.get("overrides", [])
        return ckpt.run_identity(self.spec["sha256"], overrides, self.config, bool(self.args.amp))

    def _check_compatible(self, path: Path, meta: dict[str, Any]) -> None:
        ckpt.refuse_changed_run(path, meta, self._identity())

    def wrap(self, models: dict[str, nn.Module], trained: list[str]) -> dict[str, nn.Module]:
        """The modules the training step calls: DDP across processes, torch.compile on request."""
        wrapped = dict(models)
        for name in trained:
            module = models[name]
            if self.world > 1:
                from torch.nn.parallel import DistributedDataParallel

                module = DistributedDataParallel(
                    module, device_ids=[self.device.index] if self.device.type == "cuda" else None
                )
            if self.args.compile:
                module = torch.compile(module)
            wrapped[name] = module
        return wrapped

    # ------------------------------------------------------------ during an epoch

    def start_epoch(self, epoch: int, steps: int) -> None:
        self.epoch, self.steps, self.t0, self.samples = epoch, steps, time.perf_counter(), 0
        self._pending = None  # GPU: (loss sums being copied to the host, its event, steps)
        if self.interactive and self.bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.console = Console()
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.bar.start()
        if self.bar is not None:
            self.task = self.bar.add_task(f"epoch {epoch + 1}/{self.args.epochs}", total=steps, info="")

    def progress(self, i: int, batch_samples: int, loss_sums: dict[str, torch.Tensor]) -> None:
        """Count samples; every LOG_EVERY steps update the progress bar, when one is shown. Reading the loss waits for
        the device, so without a bar nothing is read until the end of the epoch; on a GPU the bar shows the values of
        the previous update, copied without blocking."""
        self.samples += batch_samples * self.world
        if self.bar is None or ((i + 1) % LOG_EVERY and i + 1 != self.steps):
            return
        sums = torch.stack([v.detach().float() for v in loss_sums.values()])
        if self.device.type == "cuda":
            done = self._pending is not None and self._pending[1].query()
            shown = (self._pending[0].tolist(), self._pending[2]) if done else None
            if self._pending is None or done:
                event = torch.cuda.Event()
                self._pending = (sums.to("cpu", non_blocking=True), event, i + 1)
                event.record()
            if shown is None:
                return
            values, steps = shown
        else:
            values, steps = sums.tolist(), i + 1
        losses = {k: v / steps for k, v in zip(loss_sums, values)}
        rate = self.samples / max(time.perf_counter() - self.t0, 1e-9)
        info = "  ".join(f"loss{'' if len(losses) == 1 else '_' + k} {v:.4f}" for k, v in losses.items())
        self.bar.update(self.task, completed=i + 1, info=f"{info}  {rate:,.0f} samples/s")

    def train_record(self, epoch: int, loss_sums: dict[str, torch.Tensor], steps: int) -> dict[str, Any]:
        """The epoch's mean training losses, averaged over processes."""
        values = torch.stack([v.detach().float() for v in loss_sums.values()]) / steps
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(values)
            values /= self.world
        values = values.tolist()
        for name, value in zip(loss_sums, values):
            if not math.isfinite(value):
                self._stop_bar()
                last = ckpt.checkpoints(self.ckpt_dir)
                where = f"; the last good checkpoint is {last[-1]}" if last else ""
                raise error(
                    None,
                    f"the loss of step '{name}' became {value} in epoch {epoch + 1}{where}",
                    "lower the learning rate, add clip_grad_norm, or check the data for NaN/inf values",
                )
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": sum(values)}
        if len(values) > 1:
            record.update({f"train_loss_{k}": v for k, v in zip(loss_sums, values)})
        self.seconds = time.perf_counter() - self.t0
        record["samples_per_s"] = round(self.samples / max(self.seconds, 1e-9), 1)
        return record

    # ------------------------------------------------------------ end of an epoch

    def end_epoch(self, record: dict[str, Any], models: dict[str, nn.Module]) -> bool:
        """Record the epoch, checkpoint, plot; True when training should stop (early stopping)."""
        for key, value in record.items():
            if isinstance(value, float) and not math.isfinite(value) and "loss" in key:
                self._stop_bar()
                raise error(
                    None,
                    f"{key} is {value} after epoch {record['epoch']}",
                    "lower the learning rate, add clip_grad_norm, or check the data for NaN/inf values",
                )
        self.history.append(record)
        stop = self._should_stop()
        last = record["epoch"] == self.args.epochs or stop
        if self.bar is not None:
            self.bar.remove_task(self.task)
        shown = "  ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in record.items()
            if k not in ("epoch", "samples_per_s")
        )
        self.log(
            f"epoch {record['epoch']}/{self.args.epochs}  {shown}  ({record['samples_per_s']:,.0f} samples/s, {self.seconds:.1f}s)"
        )
        if self.main:
            try:
                self._save_epoch(record, last)
            except DslcError:  # e.g. a full disk: the message, not a progress bar, is the last thing shown
                self._stop_bar()
                raise
        if stop:
            self.log(
                f"early stopping: {self.config['monitor']} has not improved for {self.config['early_stopping']} epochs"
            )
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
        return stop

    def _save_epoch(self, record: dict[str, Any], last: bool) -> None:
        """The best weights, the epoch checkpoint, then metrics.jsonl (rewritten whole, never appended) and the curves,
        each file written atomically; a resumed run rewrites metrics.jsonl from its checkpoint's history."""
        self._hold_run_folder()
        if self.config.get("early_stopping") and self._best_index() == len(self.history) - 1:
            self._save_best(record)  # before the epoch checkpoint: a resumed run never lacks it
        if record["epoch"] % self.config["checkpoint_every"] == 0 or last:
            self._save_checkpoint(record["epoch"])
        self._write_metrics()

    def _should_stop(self) -> bool:
        patience = self.config.get("early_stopping")
        best = self._best_index()
        if not patience or best is None:
            return False
        return len(self.history) - 1 - best >= patience

    def _best_index(self) -> int | None:
        """The history index of the best epoch by `monitor` (the earliest of equals); None when not recorded."""
        values = [r.get(self.config["monitor"]) for r in self.history]
        if not values or any(v is None for v in values):
            return None
        sign = 1 if self._mode() == "max" else -1
        return max(range(len(values)), key=lambda i: (sign * values[i], -i))

    def _save_best(self, record: dict[str, Any]) -> None:
        meta = {
            "dslc_version": __version__,
            "epoch": record["epoch"],
            "spec_sha256": self.spec["sha256"],
            "monitor": self.config["monitor"],
            "value": record[self.config["monitor"]],
            "history": self.history,
        }
        ckpt.save(self.ckpt_dir / BEST, self.models, {}, meta)

    def _mode(self) -> str:
        return self.config.get("monitor_mode", "min")

    def _save_checkpoint(self, epoch: int) -> None:
        rng = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        state = {
            "steps": {
                name: {
                    "optimizer": o.state_dict(),
                    "scheduler": s.state_dict() if s is not None else None,
                    "scaler": sc.state_dict(),
                }
                for name, (o, s, sc) in self.state.items()
            },
            "rng": rng,
        }
        meta = {"dslc_version": __version__, "epoch": epoch, **self._identity(), "history": self.history}
        ckpt.save(ckpt.path_for(self.ckpt_dir, epoch), self.models, state, meta)
        for old in ckpt.checkpoints(self.ckpt_dir)[: -self.config.get("keep_checkpoints", 2)]:
            old.unlink(missing_ok=True)

    def _write_metrics(self) -> None:
        text = "".join(json.dumps(r) + "\n" for r in self.history)
        write_atomic(self.out / "metrics.jsonl", text)
        if self.history:
            plot(self.history, self.out / "curves.png")

    def _stop_bar(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    # ------------------------------------------------------------ the end

    def restore_best(self, models: dict[str, nn.Module]) -> None:
        """Early stopping: load the weights of the best epoch by `monitor` (checkpoints/best.safetensors),
        so that they are the ones saved and exported."""
        best = self._best_index()
        if not self.main or not self.config.get("early_stopping") or best is None:
            return
        record = self.history[best]
        self.exported_record = record
        if best == len(self.history) - 1:
            return
        monitor = self.config["monitor"]
        path = self.ckpt_dir / BEST
        if not path.is_file():
            self.log(
                f"warning: {path} is missing: exporting the last epoch's weights, not those of the best epoch {record['epoch']}"
            )
            self.exported_record = None
            return
        try:
            weights, _, meta = ckpt.load(path)
        except ckpt.CheckpointError as bad:
            self.log(
                f"warning: checkpoint {path} {bad.reason}: exporting the last epoch's weights, not the best epoch's"
            )
            self.exported_record = None
            return
        if meta.get("epoch") != record["epoch"]:
            self.log(
                f"warning: {path} holds epoch {meta.get('epoch')}, not the best epoch {record['epoch']}: exporting the last epoch's weights"
            )
            self.exported_record = None
            return
        for name, model in models.items():
            model.load_state_dict(weights[name])
        self.log(
            f"early stopping: exporting the weights of epoch {record['epoch']}, the best by {monitor} ({record[monitor]:.4f})"
        )

    def share_trained_weights(self, models: dict[str, nn.Module], trained: list[str], into: list[str]) -> None:
        """Each exported model that was not trained takes the trained weights by parameter name (`encoder.*` of a
        trained `vae` into a model `encoder` built from the same block), when every one of its parameters and
        buffers has a trained counterpart of the same shape; otherwise it keeps its initial weights, with a warning."""
        if not self.main:
            return
        sources = {name: models[name].state_dict() for name in trained}
        for name in into:
            target = models[name].state_dict()
            if not target:
                continue
            if name in self.loaded:
                self.weights[name] = "loaded (--weights)"
                self.log(f"model '{name}' keeps the weights given with --weights")
                continue
            found, origins, problem = match_state(target, sources)
            if found is None:
                self.weights[name] = "initial"
                self.log(f"warning: model '{name}' keeps its initial, untrained weights: {problem}")
                continue
            models[name].load_state_dict(found)
            self.weights[name] = (
                f"trained (from {', '.join(origins)})" if self.history else f"from {', '.join(origins)}"
            )
            self.log(
                f"model '{name}' takes its {len(target)} parameters and buffers from the {'trained ' if self.history else ''}{', '.join(origins)} (by name)"
            )

    def _origin(self, name: str, trained: list[str]) -> str:
        """Where the exported weights of `name` come from, for the manifest."""
        if name in self.weights:
            return self.weights[name]
        if name in trained and self.history:
            return "trained"
        return "loaded (--weights)" if name in self.loaded else "initial"

    def finish(
        self, models: dict[str, nn.Module], data: Any, export: list[str], trained: list[str] | None = None
    ) -> None:
        """Save the exported models' weights (<model>.safetensors) and export them to verified ONNX; the manifest
        says for each where its weights come from (`trained`, `trained (from MODEL)` or `initial`)."""
        self._stop_bar()
        if self.main:
            from safetensors.torch import save as safetensors_bytes

            self._hold_run_folder()

            from dslc.training.export import export_trained

            states = {
                name: {k: v.detach().cpu().clone() for k, v in models[name].state_dict().items()} for name in models
            }
            for name in export:
                write_atomic(self.out / f"{name}.safetensors", safetensors_bytes(states[name]))
            if data.vocab:
                write_atomic(self.out / "vocab.json", json.dumps(data.vocab, ensure_ascii=False) + "\n")
            sources = None
            if trained is not None:
                sources = {n: self._origin(n, trained) for n in export}
                for name in export:
                    if (
                        sources[name] == "initial"
                        and name not in self.weights
                        and name not in trained
                        and any(True for _ in models[name].parameters())
                    ):
                        self.log(
                            f"warning: model '{name}' is exported with its initial, untrained weights (no step trains it)"
                        )
            reports = export_trained(
                self.spec, self.out, {n: states[n] for n in export}, data.vocab, data.labels, sources
            )
            for r in reports:
                verified = f"verified (max abs diff {r.max_abs_diff:.1e})" if r.verified else "not verified"
                self.log(f"wrote {self.out / r.onnx}: {r.nodes} nodes, {r.params:,} parameters, {verified}")
            if self.history:
                record = self.exported_record or self.history[-1]
                label = "final" if record is self.history[-1] else f"exported (best, epoch {record['epoch']})"
                shown = {k: v for k, v in record.items() if k != "samples_per_s"}
                self.log(
                    f"{label}: "
                    + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
                )
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
        if self.owns_lock:
            unlock_folder(self.out)
            self.owns_lock = False
