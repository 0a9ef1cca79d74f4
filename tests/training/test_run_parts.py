"""The parts `rt.Run` composes, each on its own with real torch: processes and device, the run folder and its
checkpoints, the history, progress and logging, and the weight sources of the export."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from dslc.errors import DslcError
from dslc.fileio import lock_holder
from dslc.training import checkpoint as ckpt
from dslc.training.export import WeightSources
from dslc.training.history import History
from dslc.training.processes import Processes
from dslc.training.progress import Progress, refuse_diverged, refuse_non_finite
from dslc.training.run_folder import RunFolder, load_checkpoint
from dslc.training.weights import load_weights

# ---------------------------------------------------------------- processes and device


def test_one_cpu_process_with_bf16_autocast():
    processes = Processes("cpu", amp=True, steps=2, env={})
    assert (processes.world, processes.rank, processes.main, processes.device) == (1, 0, True, torch.device("cpu"))
    with processes.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert not processes.grad_scaler().is_enabled()  # loss scaling only for float16
    values = torch.tensor([1.0, 3.0])
    assert processes.mean(values) is values


def test_without_amp_autocast_changes_nothing_and_wrap_keeps_the_modules():
    processes = Processes("auto" if not torch.cuda.is_available() else "cpu", amp=False, steps=1, env={})
    with processes.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    models = {"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)}
    wrapped = processes.wrap(models, trained=["a"], compile=False)
    assert wrapped == models and wrapped is not models


def test_several_processes_refuse_alternating_steps_before_joining_a_group():
    with pytest.raises(DslcError, match="support one training step; this spec alternates steps"):
        Processes("cpu", amp=False, steps=2, env={"WORLD_SIZE": "2", "RANK": "1"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_cuda_without_a_gpu_is_an_error():
    with pytest.raises(DslcError, match="--device cuda: no CUDA device is available"):
        Processes("cuda", amp=False, steps=1, env={})


# ---------------------------------------------------------------- history and early stopping


def test_history_best_epoch_and_early_stopping():
    history = History("val_loss", "min", patience=2)
    assert history.best_index() is None and not history.should_stop()
    for value in (0.5, 0.4, 0.4, 0.6):
        history.records.append({"epoch": len(history.records) + 1, "val_loss": value})
    assert history.best_index() == 1  # the earliest of equals
    assert not history.last_is_best() and history.should_stop()
    assert History("accuracy", "max").best_index() is None
    most = History("accuracy", "max")
    most.records = [{"accuracy": 0.2}, {"accuracy": 0.9}]
    assert most.best_index() == 1 and not most.last_is_best()  # no patience: no best weights are kept
    assert History("val_loss", patience=1).best_index() is None
    partial = History("val_loss")
    partial.records = [{"epoch": 1}]
    assert partial.best_index() is None


# ---------------------------------------------------------------- progress and logging


def test_progress_lines_and_records(capsys):
    progress = Progress(main=True, bar=False, epochs=3, world=2)
    progress.start_epoch(0, steps=4)
    for i in range(4):
        progress.update(i, 8, {"d": torch.tensor(1.0), "g": torch.tensor(2.0)})
    record = progress.record(0, {"d": 0.25, "g": 0.5})
    assert record["epoch"] == 1 and record["train_loss"] == 0.75
    assert record["train_loss_d"] == 0.25 and record["train_loss_g"] == 0.5
    assert progress.samples == 64 and record["samples_per_s"] > 0  # every process's share
    progress.end_epoch({**record, "val_loss": 0.5})
    progress.log("done")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "epoch 1/3  train_loss 0.7500  train_loss_d 0.2500  train_loss_g 0.5000  val_loss 0.5000"
    )
    assert lines[1] == "done"
    Progress(main=False, bar=True, epochs=1).log("not rank 0")
    assert capsys.readouterr().out == ""


def test_a_diverged_loss_names_the_last_checkpoint(tmp_path):
    refuse_diverged(0, {"step": 1.0}, None)
    with pytest.raises(DslcError) as caught:
        refuse_diverged(2, {"step": float("nan")}, tmp_path / "epoch-0002.safetensors")
    message = caught.value.render()
    assert "the loss of step 'step' became nan in epoch 3; the last good checkpoint is" in message
    assert "hint: lower the learning rate" in message
    with pytest.raises(DslcError, match="val_loss is inf after epoch 4"):
        refuse_non_finite({"epoch": 4, "val_loss": float("inf"), "accuracy": 0.5})


# ---------------------------------------------------------------- the run folder and its checkpoints


def _logged() -> tuple[list[str], object]:
    lines: list[str] = []
    return lines, lines.append


def test_run_folder_takes_its_lock_writes_config_and_refuses_a_second_run(tmp_path):
    lines, log = _logged()
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / ".metrics.jsonl.0123abcd.tmp").write_text("half")  # what an interrupted write leaves
    folder = RunFolder(out, log)
    folder.take(resume=False, config={"train": {"epochs": 1}})
    assert folder.owns_lock and lock_holder(out) == os.getpid()
    assert json.loads((out / "config.json").read_text()) == {"train": {"epochs": 1}}
    assert lines == ["removed 1 leftover(s) of an interrupted write: .metrics.jsonl.0123abcd.tmp"]
    folder.save_checkpoint(1, {"m": nn.Linear(2, 1)}, {}, {"history": []}, keep=2)
    folder.release()
    assert not folder.owns_lock
    again = RunFolder(out, log)
    with pytest.raises(DslcError, match="already holds a run \\(epoch-0001.safetensors\\)"):
        again.take(resume=False, config={})
    again.release()


def test_checkpoints_rotate_and_restore_models_optimizers_and_rng(tmp_path):
    folder = RunFolder(tmp_path, print)
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    steps = {"main": (optimizer, None, scaler)}
    for epoch in (1, 2, 3):
        folder.save_checkpoint(epoch, {"m": model}, steps, {"history": [{"epoch": epoch}]}, keep=2)
    assert [p.name for p in ckpt.checkpoints(folder.checkpoints)] == [
        "epoch-0002.safetensors",
        "epoch-0003.safetensors",
    ]
    assert folder.last_checkpoint() == folder.checkpoints / "epoch-0003.safetensors"
    expected = torch.rand(3)  # the draw after the checkpoint's RNG state
    weights, state, meta = ckpt.load(folder.last_checkpoint())
    assert meta["epoch"] == 3 and meta["history"] == [{"epoch": 3}]
    fresh = nn.Linear(3, 2)
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=0.1)
    load_checkpoint(folder.last_checkpoint(), weights, state, {"m": fresh}, {"main": (fresh_optimizer, None, scaler)})
    assert torch.equal(fresh.weight, model.weight)
    assert torch.equal(
        fresh_optimizer.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )
    assert torch.equal(torch.rand(3), expected)
    with pytest.raises(DslcError, match="the weights of model 'm' does not fit"):
        load_checkpoint(folder.last_checkpoint(), weights, state, {"m": nn.Linear(3, 5)}, {})


def test_best_weights_come_back_only_for_their_epoch(tmp_path):
    folder = RunFolder(tmp_path, print)
    assert folder.best_weights(1) == (None, f"{folder.checkpoints / 'best.safetensors'} is missing")
    model = nn.Linear(2, 2)
    folder.save_best({"m": model}, {"epoch": 2, "history": []})
    weights, problem = folder.best_weights(2)
    assert problem == "" and torch.equal(weights["m"]["weight"], model.weight)
    assert folder.best_weights(3)[1].endswith("holds epoch 2, not the best epoch 3")


def test_metrics_are_rewritten_whole_with_their_curves(tmp_path):
    folder = RunFolder(tmp_path, print)
    records = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}]
    folder.write_metrics(records)
    folder.write_metrics(records[:1])
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == records[:1]
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    folder.release()


# ---------------------------------------------------------------- where exported weights come from


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(2, 3)
        self.head = nn.Linear(3, 1)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(2, 3)


def test_weight_sources_share_by_name_and_say_where_weights_come_from():
    lines, log = _logged()
    models = {"pair": Pair(), "encoder": Encoder(), "probe": nn.Linear(4, 4), "loaded": Encoder()}
    sources = WeightSources(log)
    sources.loaded = {"loaded"}
    sources.share_trained_weights(models, trained=["pair"], into=["encoder", "probe", "loaded"], after_training=True)
    assert torch.equal(models["encoder"].encoder.weight, models["pair"].encoder.weight)
    assert lines[0] == "model 'encoder' takes its 2 parameters and buffers from the trained pair (by name)"
    assert lines[1].startswith("warning: model 'probe' keeps its initial, untrained weights: 2 of its 2")
    assert lines[2] == "model 'loaded' keeps the weights given with --weights"
    origins = sources.origins(models, ["pair", "encoder", "probe", "loaded"], trained=["pair"], after_training=True)
    assert origins == {
        "pair": "trained",
        "encoder": "trained (from pair)",
        "probe": "initial",
        "loaded": "loaded (--weights)",
    }
    untrained = WeightSources(log)
    assert untrained.origins(models, ["probe"], trained=[], after_training=False) == {"probe": "initial"}
    assert lines[-1] == "warning: model 'probe' is exported with its initial, untrained weights (no step trains it)"
    partly = WeightSources(log)  # --epochs 0, --weights for one model of two
    partly.loaded = {"loaded"}
    assert partly.origins(models, ["loaded", "probe"], trained=["loaded", "probe"], after_training=False) == {
        "loaded": "loaded (--weights)",
        "probe": "initial",
    }
    assert lines[-1] == (
        "warning: model 'probe' is exported with its initial, untrained weights: no --weights file was given for it "
        "(--weights probe=FILE)"
    )


def test_weights_from_an_epoch_checkpoint_go_to_each_model_it_holds(tmp_path):
    trained = {"generator": nn.Linear(3, 4), "discriminator": nn.Linear(4, 1)}
    path = tmp_path / "epoch-0001.safetensors"
    ckpt.save(path, trained, {"step": 3}, {"epoch": 1, "history": []})
    fresh = {"generator": nn.Linear(3, 4), "discriminator": nn.Linear(4, 1)}
    assert load_weights([str(path)], fresh) == [
        f"loaded 2 tensors from {path} into 'generator'",
        f"loaded 2 tensors from {path} into 'discriminator'",
    ]
    assert all(torch.equal(fresh[n].weight, trained[n].weight) for n in trained)
    alone = {"generator": nn.Linear(3, 4), "discriminator": nn.Linear(4, 1)}
    load_weights([f"discriminator={path}"], alone)
    assert torch.equal(alone["discriminator"].weight, trained["discriminator"].weight)
    with pytest.raises(DslcError, match="model 'discriminator' is given weights twice"):
        load_weights(
            [str(path), f"discriminator={path}"],
            {n: nn.Linear(m.in_features, m.out_features) for n, m in trained.items()},
        )
    assert not torch.equal(alone["generator"].weight, trained["generator"].weight)
    with pytest.raises(DslcError, match="this spec has no model 'critic'") as caught:
        load_weights([f"critic={path}"], alone)  # a typo is not taken for a file named 'critic=...'
    assert caught.value.diagnostics[0].hint.startswith("its models: generator, discriminator; or pass the file alone")
    with pytest.raises(DslcError, match="holds the models discriminator, generator, none of this spec's \\(mlp\\)"):
        load_weights([str(path)], {"mlp": nn.Linear(3, 4)})
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 1  # a weight's last byte
    path.write_bytes(bytes(damaged))
    with pytest.raises(DslcError, match="does not match its checksum") as caught:
        load_weights([str(path)], fresh)
    assert caught.value.diagnostics[0].hint.startswith("pass another checkpoint of the run")  # not about --resume


def test_a_file_alone_goes_to_the_model_of_its_names_and_shapes(tmp_path):
    """gan's generator and discriminator both name their layers fc1..fc3: the shapes say which model a file is for."""
    from safetensors.torch import save_file

    trained = nn.Linear(4, 1)
    path = tmp_path / "discriminator.safetensors"
    save_file(trained.state_dict(), path)
    models = {"generator": nn.Linear(3, 4), "discriminator": nn.Linear(4, 1)}
    assert load_weights([str(path)], models) == [f"loaded 2 tensors from {path} into 'discriminator'"]
    assert torch.equal(models["discriminator"].weight, trained.weight)
    for ignore in (False, True):  # not another model's file taken for a new head, loading nothing
        with pytest.raises(DslcError, match="does not fit model 'generator'") as caught:
            load_weights([f"generator={path}"], models, ignore_mismatched_sizes=ignore)
        assert (
            caught.value.diagnostics[0].hint == f"the file fits model 'discriminator': --weights discriminator={path}"
        )
    with pytest.raises(DslcError, match="fits the models a, b alike") as caught:
        load_weights([str(path)], {"a": nn.Linear(4, 1), "b": nn.Linear(4, 1)})
    assert caught.value.diagnostics[0].hint == f"say which it is for: --weights a={path}"


def test_a_file_that_is_no_state_dict_is_refused_in_one_line_without_running_it(tmp_path):
    import pickle

    script = tmp_path / "model.py"
    script.write_text("print('hello')\n")
    hostile = tmp_path / "weights.pt"
    hostile.write_bytes(pickle.dumps({"a": os.system}))  # a pickle that names a function: never called
    for path in (script, hostile):
        with pytest.raises(DslcError) as caught:
            load_weights([str(path)], {"mlp": nn.Linear(3, 4)})
        assert (
            caught.value.diagnostics[0].message == f"--weights: cannot read {path} (UnpicklingError: not a state dict)"
        )


# ---------------------------------------------------------------- what a resume must match


def test_a_refused_resume_notes_each_change_with_both_values(tmp_path):
    saved = ckpt.run_identity("a" * 64, ["hidden=5"], {"epochs": 2, "steps": [{"optimizer": {"lr": 0.1}}]}, amp=False)
    same = ckpt.run_identity("a" * 64, ["hidden=5"], {"epochs": 2, "steps": [{"optimizer": {"lr": 0.1}}]}, amp=False)
    ckpt.refuse_changed_run(tmp_path / "c", saved, same)
    now = ckpt.run_identity("b" * 64, ["hidden=6"], {"epochs": 3, "steps": [{"optimizer": {"lr": 0.1}}]}, amp=True)
    with pytest.raises(DslcError) as caught:
        ckpt.refuse_changed_run(tmp_path / "c", saved, now)
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.message == f"cannot resume from {tmp_path / 'c'}: the spec changed since it was written"
    assert diagnostic.notes == [
        f"spec sha256: {'a' * 16} in the checkpoint, {'b' * 16} now",
        "--amp: off in the checkpoint, on now",
        "--set hidden: 5 in the checkpoint, 6 now",
        "epochs: 2 in the checkpoint, 3 now",
    ]


def test_spec_changes_show_the_lines_from_the_runs_copy():
    old = "const a = 1\nconst b = 2\nmodel m {}\n"
    new = "const a = 1\nconst b = 3\nconst c = 4\nmodel m {}\n"
    assert ckpt.spec_changes(old, new) == [
        "spec line 2: `const b = 2` in the run's copy, `const b = 3 / const c = 4` now"
    ]
    many = "\n".join(f"x{i}" for i in range(20))
    changed = "\n".join(f"x{i}" if i % 2 else f"y{i}" for i in range(20))
    assert ckpt.spec_changes(many, changed, shown=2)[-1] == "... and 8 more changed places"
