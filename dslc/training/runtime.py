"""What a generated training script imports besides PyTorch: its flags, batching, metric helpers, and `Run`, which
composes the parts of a run: its device and processes (processes.py), the run folder with its checkpoints
(run_folder.py), the epoch history (history.py), progress and logging (progress.py), and the final export (export.py).

The training step, losses, optimizers and the loop itself stay in the generated script.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from dslc import __version__
from dslc.errors import DslcError, error
from dslc.extras import MissingExtraError, available
from dslc.fileio import write_atomic
from dslc.training import checkpoint as ckpt
from dslc.training.augment import Augmented
from dslc.training.board import Board
from dslc.training.export import WeightSources, export_trained, match_state, write_weights
from dslc.training.flags import check_combinations, parse_script_args, variants, with_flags
from dslc.training.history import History
from dslc.training.interrupts import Interrupts, RunInterruptedError, resume_command
from dslc.training.preprocess import record_in_config
from dslc.training.processes import Processes
from dslc.training.progress import LOG_EVERY, Progress, format_values, refuse_diverged, refuse_non_finite
from dslc.training.run_folder import RunFolder, StepState, load_checkpoint

# what generated scripts use (match_state: the tests of sharing weights by name)
__all__ = ["Batches", "Run", "Totals", "ctc_char_errors", "edit_distance", "match_state", "parse_args", "run_script"]


def parse_args(argv: list[str] | None, config: dict[str, Any], script_dir: Path) -> argparse.Namespace:
    """The script's flags (dslc/training/flags.py): train settings default to CONFIG's, --out and --data-dir to the
    script's folder `script_dir`."""
    args = parse_script_args(argv, config, script_dir)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the --resume command an interrupt prints
    return args


def run_script(main: Callable[[], None]) -> None:
    """Entry point of a generated script: dslc errors (and a missing optional package) as messages, not tracebacks;
    an interrupt exits with 128 + the signal, after saying how to resume."""
    from dslc.extras import missing_extra

    try:
        main()
    except DslcError as exc:
        print(exc.render(), file=sys.stderr)
        sys.exit(1)
    except RunInterruptedError as stop:
        if stop.message:
            print(stop.message, file=sys.stderr)
        sys.exit(stop.code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except ImportError as exc:
        missing = missing_extra(exc)
        if missing is None:
            raise
        print(missing.render(), file=sys.stderr)
        sys.exit(1)


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

    def epoch(self, epoch: int, start: int = 0):
        """The batches of `epoch`, from its batch `start` on (a run resumed mid-epoch)."""
        if not self.workers:
            tensors = self.tensors
            for idx in self.indices(epoch, self.device)[start:]:
                yield {k: v[idx] for k, v in tensors.items()}
            return
        chunks = self.indices(epoch)[start:]
        loader = torch.utils.data.DataLoader(
            chunks,
            batch_size=None,
            num_workers=self.workers,
            collate_fn=lambda idx: {k: v[idx] for k, v in self.tensors.items()},
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            # the workers' seeds come from their own generator: the training's random draws (dropout, noise) do not
            # depend on when an epoch's loader starts, so a run resumed mid-epoch draws what an uninterrupted one does
            generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch),
        )
        for batch in loader:
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}


Method = TypeVar("Method", bound=Callable[..., Any])


def _stops_bar(method: Method) -> Method:
    """A DslcError from `method` is the last thing shown: the progress bar stops first."""

    @functools.wraps(method)
    def wrapper(self: Run, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except DslcError:
            self.display.stop()
            raise

    return wrapper  # type: ignore[return-value]


class Run:
    """One training run as the generated script drives it; `spec_copy` is the copy of the spec next to the script
    (the final export compiles it)."""

    def __init__(
        self, args: argparse.Namespace, spec: dict[str, Any], config: dict[str, Any], spec_copy: Path, steps: int = 1
    ):
        self.args, self.spec, self.spec_copy = args, spec, spec_copy
        self.config = with_flags(config, vars(args))
        self.processes = Processes(args.device, args.amp, steps)
        self.device = self.processes.device
        self.main = self.processes.main
        self.display = Progress(self.main, sys.stdout.isatty() and not args.quiet, args.epochs, self.processes.world)
        self.log = self.display.log
        self.folder = RunFolder(Path(args.out), self.log)
        monitor = self.config["monitor"]
        mode, patience = self.config.get("monitor_mode", "min"), self.config.get("early_stopping")
        self.history = History(monitor, mode, patience, self.config.get("stop_at"))
        self.weights = WeightSources(self.log)
        self.models: dict[str, nn.Module] = {}
        self.steps: StepState = {}
        self.exported_record: dict[str, Any] | None = None  # the epoch whose weights are exported
        self.interrupts = Interrupts()
        self.epoch, self.epoch_steps = 0, 0  # the epoch under way (0-based) and its steps
        self.resume_step = 0  # resumed from a mid-epoch checkpoint: the steps of its epoch already taken
        self.resumed_sums: dict[str, torch.Tensor] = {}  # ... and their loss sums
        # an interrupt stops only where every step's gradient accumulation is complete
        self.whole_steps = math.lcm(*(s.get("accumulate", 1) for s in self.config.get("steps") or [{}]))
        self.board: Board | None = None
        if self.main:
            world = self.processes.world
            self.folder.take(
                args.resume, {"dslc_version": __version__, "spec": spec, "train": self.config, "world_size": world}
            )
        torch.manual_seed(args.seed)

    @property
    def samples(self) -> int:
        """Samples trained on so far in this epoch, by all processes."""
        return self.display.samples

    # ------------------------------------------------------------ setup

    def batches(
        self, tensors: dict[str, torch.Tensor], batch_size: int, shuffle: bool, workers: int = 0, split: bool = True
    ) -> Batches:
        """Batches of `tensors`; `split`: each process takes its share of every batch (the training batches, which
        get the train section's `augment`; evaluation batches are whole and never augmented)."""
        rank, world = (self.processes.rank, self.processes.world) if split else (0, 1)
        batches = Batches(tensors, batch_size, shuffle, self.args.seed, rank, world, self.device, workers)
        return Augmented(batches, self.config["augment"]) if split and self.config.get("augment") else batches

    def episodes(self, data: Any, act: Callable[..., torch.Tensor], models: dict[str, nn.Module]) -> Any:
        """An episodes data source's batches, played by `act(models, batch)`: the policy's scores, in one process."""
        if self.processes.world > 1:
            raise error(None, "an episodes data set trains in one process", "drop --nproc (or run without torchrun)")
        return data.play(lambda batch: act(models, batch), self.device)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return self.processes.grad_scaler()

    def autocast(self):
        return self.processes.autocast()

    @_stops_bar
    def restore(self, models: dict[str, nn.Module], steps: StepState) -> int:
        """Remember what a checkpoint holds; with --resume load the newest usable one (a damaged newer one is skipped,
        with a warning), else the --weights. Returns the first epoch to run."""
        self.models, self.steps = models, steps
        first = self._restore(models, steps)
        self._open_board(first)
        self.interrupts.install()  # from here on, Ctrl-C saves a checkpoint before stopping
        return first

    def _restore(self, models: dict[str, nn.Module], steps: StepState) -> int:
        check_combinations(vars(self.args))  # the generated script's own flags
        latest = ckpt.load_latest(self.folder.checkpoints) if self.args.resume else None
        if latest is None:
            if self.args.resume:
                self.log(f"no checkpoint in {self.folder.checkpoints}: starting from the beginning")
            if self.args.weights:
                self._load_weights(models)
            return 0
        path, (weights, state, meta), refused = latest
        for bad in refused:
            self.log(f"warning: checkpoint {bad.path} {bad.reason}: resuming from {path.name} instead")
        ckpt.refuse_changed_run(path, meta, self._identity())
        if self.args.weights:
            raise error(
                None,
                f"--weights cannot be combined with --resume: {path} holds the weights to continue from",
                "drop --weights to continue the run, or start a new run with another --out",
            )
        load_checkpoint(path, weights, state, models, steps)
        self.history.records = meta["history"]
        if self.main:
            self.folder.write_metrics(self.history.records)
        self.resume_step = meta.get("step", 0)
        self.resumed_sums = state.get("epoch", {}).get("loss_sums", {})
        within = f", step {self.resume_step} of epoch {meta['epoch'] + 1}" if self.resume_step else ""
        self.log(f"resumed from {path} (epoch {meta['epoch']}{within})")
        return meta["epoch"]

    def _open_board(self, first_epoch: int) -> None:
        """TensorBoard event files, unless --no-tensorboard; without tensorboard installed, a note says so once."""
        if not self.main or getattr(self.args, "no_tensorboard", True):
            return
        if not available("tensorboard"):
            note = MissingExtraError("tensorboard")
            self.log(f"note: no TensorBoard logs: {note.message}; {note.hint}; --no-tensorboard hides this note")
            return
        self.board = Board(self.folder.out, first_epoch)

    def _load_weights(self, models: dict[str, nn.Module]) -> None:
        from dslc.training.weights import load_weights

        versions = {n: [t._version for t in m.state_dict().values()] for n, m in models.items()}
        for line in load_weights(self.args.weights, models, getattr(self.args, "ignore_mismatched_sizes", False)):
            self.log(line)
        # models given weights explicitly keep them (share_trained_weights leaves them alone)
        changed = {n for n, m in models.items() if [t._version for t in m.state_dict().values()] != versions[n]}
        self.weights.loaded = changed

    def _identity(self) -> dict[str, Any]:
        """What a resumed run must match (recorded in every epoch checkpoint)."""
        return ckpt.run_identity(self.spec["sha256"], self.spec["overrides"], self.config, self.args.amp)

    def wrap(self, models: dict[str, nn.Module], trained: list[str]) -> dict[str, nn.Module]:
        """The modules the training step calls: DDP across processes, torch.compile on request."""
        return self.processes.wrap(models, trained, self.args.compile)

    # ------------------------------------------------------------ epochs

    def start_epoch(self, epoch: int, steps: int, loss_sums: dict[str, torch.Tensor] | None = None) -> int:
        """Start `epoch`; returns its first step: 0, or the steps a mid-epoch checkpoint resumed from had taken (their
        loss sums are put into `loss_sums`)."""
        self.epoch, self.epoch_steps = epoch, steps
        self.display.start_epoch(epoch, steps)
        first, self.resume_step = self.resume_step, 0
        if first and loss_sums is not None:
            for name, total in self.resumed_sums.items():
                loss_sums[name] = total.to(self.device)
            return first
        return 0

    def progress(self, i: int, batch_samples: int, loss_sums: dict[str, torch.Tensor]) -> None:
        """After each training step: the progress bar; on Ctrl-C or SIGTERM, a checkpoint of this step, then stop."""
        self.display.update(i, batch_samples, loss_sums)
        self.interrupts.stepped()
        if note := self.interrupts.notice():
            self.log(note)
        last = i + 1 == self.epoch_steps  # the end of the epoch checkpoints anyway (end_epoch)
        if (i + 1) % self.whole_steps == 0 and not last and self._stopping((i + 1) % LOG_EVERY == 0):
            self._stop(i + 1, loss_sums)

    def _stopping(self, agree: bool) -> bool:
        """Whether a signal asks to stop; several processes stop at the same step: they compare at `agree` steps."""
        if self.processes.world == 1:
            return self.interrupts.requested
        if not agree:
            return False
        flag = torch.tensor([float(self.interrupts.requested)], device=self.device)
        return bool(self.processes.mean(flag).item() > 0)

    def _stop(self, step: int, loss_sums: dict[str, torch.Tensor]) -> None:
        """Checkpoint `step` steps into the epoch under way (with their loss sums) and stop."""
        self.display.stop()
        path = None
        if self.main:
            meta = {**self._identity(), "history": self.history.records, "step": step}
            sums = {name: total.detach() for name, total in loss_sums.items()}
            keep = self.config.get("keep_checkpoints", 2)
            path = self.folder.save_checkpoint(self.epoch, self.models, self.steps, meta, keep, step, sums)
        self.processes.barrier()
        self._interrupted(f"after step {step}/{self.epoch_steps} of epoch {self.epoch + 1}", path)

    def _interrupted(self, where: str, path: Path | None) -> None:
        """Stop the run on the signal received, saying where it stopped and how to resume."""
        signum = self.interrupts.signum or signal.SIGINT
        self.interrupts.restore()
        if self.main:
            self.folder.plot_skipped()
        if self.board is not None:
            self.board.close()
        self.processes.close()
        self.folder.release()
        message = ""
        if self.main:
            name = signal.Signals(signum).name
            message = f"interrupted ({name}) {where}: saved {path}\nresume with: {resume_command(self.args.argv)}"
        raise RunInterruptedError(signum, message)

    @_stops_bar
    def train_record(self, epoch: int, loss_sums: dict[str, torch.Tensor], steps: int) -> dict[str, Any]:
        """The epoch's mean training losses, averaged over processes; NaN/inf stops the run."""
        values = self.processes.mean(torch.stack([v.detach().float() for v in loss_sums.values()]) / steps)
        losses = dict(zip(loss_sums, values.tolist()))
        refuse_diverged(epoch, losses, self.folder.last_checkpoint())
        return self.display.record(epoch, losses)

    @_stops_bar
    def end_epoch(self, record: dict[str, Any], models: dict[str, nn.Module]) -> bool:
        """Record the epoch, checkpoint, plot; True when training should stop (early stopping)."""
        refuse_non_finite(record)
        self.history.records.append(record)
        stop = self.history.should_stop()
        self.display.end_epoch(record)
        interrupted = self._stopping(agree=True)
        if self.main:
            self._save_epoch(record, last=record["epoch"] == self.args.epochs or stop or interrupted)
            if self.board is not None:
                self.board.epoch(record, self._learning_rates())
        if interrupted:
            self.display.stop()
            self.processes.barrier()
            self._interrupted(f"after epoch {record['epoch']}", ckpt.path_for(self.folder.checkpoints, record["epoch"]))
        if stop and self.history.reached():
            monitor = self.history.monitor
            self.log(f"stopping: {monitor} reached {self.history.stop_at:g} ({record[monitor]:.4g}), stop_at")
        elif stop:
            patience = self.config["early_stopping"]
            self.log(f"early stopping: {self.history.monitor} has not improved for {patience} epochs")
        self.processes.barrier()
        return stop

    def _learning_rates(self) -> dict[str, float]:
        """Each step's learning rate (its optimizer's first parameter group; the others by number)."""
        rates = {}
        for name, (optimizer, _, _) in self.steps.items():
            for g, group in enumerate(optimizer.param_groups):
                rates[name if g == 0 else f"{name}_group{g}"] = float(group["lr"])
        return rates

    def _save_epoch(self, record: dict[str, Any], last: bool) -> None:
        """The best weights, the epoch checkpoint, then metrics.jsonl and the curves; a resumed run rewrites
        metrics.jsonl from its checkpoint's history."""
        records = self.history.records
        if self.history.last_is_best():  # before the epoch checkpoint: a resumed run never lacks it
            best = {"epoch": record["epoch"], "monitor": self.history.monitor, "value": record[self.history.monitor]}
            self.folder.save_best(self.models, {**best, "spec_sha256": self.spec["sha256"], "history": records})
        if record["epoch"] % self.config["checkpoint_every"] == 0 or last:
            meta = {**self._identity(), "history": records}
            self.folder.save_checkpoint(
                record["epoch"], self.models, self.steps, meta, self.config.get("keep_checkpoints", 2)
            )
        self.folder.write_metrics(records, final=last)

    # ------------------------------------------------------------ the end

    def restore_best(self, models: dict[str, nn.Module]) -> None:
        """Early stopping: load the weights of the best epoch by `monitor` (checkpoints/best.safetensors), so that
        they are the ones saved and exported."""
        best = self.history.best_index()
        if not self.main or not self.history.patience or best is None:
            return
        record = self.history.records[best]
        if best < len(self.history.records) - 1:
            weights, problem = self.folder.best_weights(record["epoch"])
            if weights is None:
                self.log(f"warning: {problem}: exporting the last epoch's weights, not the best epoch's")
                return
            for name, model in models.items():
                model.load_state_dict(weights[name])
            monitor = self.history.monitor
            self.log(
                f"early stopping: exporting the weights of epoch {record['epoch']}, "
                f"the best by {monitor} ({record[monitor]:.4f})"
            )
        self.exported_record = record

    def share_trained_weights(self, models: dict[str, nn.Module], trained: list[str], into: list[str]) -> None:
        """Exported models no step trains take the trained weights by parameter name (export.WeightSources)."""
        if self.main:
            self.weights.share_trained_weights(models, trained, into, after_training=bool(self.history.records))

    @_stops_bar
    def finish(self, models: dict[str, nn.Module], data: Any, export: list[str], trained: list[str]) -> None:
        """Save the exported models' weights (<model>.safetensors) and export them to verified ONNX; the manifest
        says for each where its weights come from (`trained`, `trained (from MODEL)` or `initial`)."""
        self.display.stop()
        self.interrupts.restore()  # a Ctrl-C during the export stops at once: the checkpoints hold the run
        if self.main:
            self.folder.plot_skipped()
        if self.board is not None:
            self.board.close()
        if self.main:
            self._export(models, data, export, trained)
        self.processes.close()
        self.folder.release()

    def _export(self, models: dict[str, nn.Module], data: Any, export: list[str], trained: list[str]) -> None:
        out = self.folder.out
        self.folder.hold()
        states = write_weights(out, models, export)
        if data.vocab:
            write_atomic(out / "vocab.json", json.dumps(data.vocab, ensure_ascii=False) + "\n")
        records = self.history.records
        sources = self.weights.origins(models, export, trained, after_training=bool(records))
        preprocess = getattr(data, "preprocess", {})  # raw inputs -> what the model trained on (preprocess.py)
        record_in_config(out, preprocess)
        try:
            reports = export_trained(
                self.spec_copy,
                self.spec,
                Path(self.args.data_dir),
                out,
                states,
                data.vocab,
                data.labels,
                sources,
                preprocess,
                variants(self.args.precision or [], self.args.quantize),
            )
        except DslcError as exc:
            if records:  # the training is saved: say how to export it again without training
                exc.diagnostics[0].notes.append(
                    f"the trained weights are saved in {out}: run again with --resume (and the export flags you "
                    "want) to export them without training again"
                )
            raise
        for r in reports:
            self.log(r.summary(out))
            for variant in r.variants:
                self.log(variant.summary(out))
            for note in r.notes:
                self.log(f"note: {note}")
            if r.decoder:
                self.log(r.decoder.summary(out))
        if records:
            record = self.exported_record or records[-1]
            label = "final" if record is records[-1] else f"exported (best, epoch {record['epoch']})"
            self.log(f"{label}: " + format_values({k: v for k, v in record.items() if k != "samples_per_s"}))
