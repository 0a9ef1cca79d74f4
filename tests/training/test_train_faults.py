"""Training runs under faults, with real torch and real files: debris of interrupted writes, damaged
checkpoints, two runs into one folder, a full disk, resumes with other settings, bad CSV files, CRLF
specs, and the permissions of the files a run writes."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load as st_load
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from dslc.checker import check_file
from dslc.cli import main
from dslc.data import sets
from dslc.errors import DslcError, read_source
from dslc.fileio import lock_folder, lock_holder, remove_debris, spec_sha256, unlock_folder, write_atomic
from dslc.training import checkpoint as ckpt
from tests.conftest import ROOT, SPECS

MLP = SPECS / "mlp.model"


def train(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["train", *args])
    return result.exit_code, result.output + (str(result.exception) if result.exit_code not in (0, 1) else "")


def python(code: str, *args: str, **kw) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (for faults that must not touch the test process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", textwrap.dedent(code), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, **kw)


def trained(tmp_path: Path, epochs: int = 2, name: str = "run") -> Path:
    out = tmp_path / name
    code, output = train(str(MLP), "--out", str(out), "--epochs", str(epochs), "--quiet")
    assert code == 0, output
    return out


def data_offset(path: Path) -> int:
    """Where a safetensors file's tensor data starts (after the 8-byte length and the JSON header)."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def flip_bytes(path: Path, count: int, seed: int = 0) -> None:
    raw = bytearray(path.read_bytes())
    start = data_offset(path)
    for i in random.Random(seed).sample(range(start, len(raw)), count):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def rewrite_metadata(path: Path, edit) -> None:
    """Rewrite a checkpoint's metadata with `edit(metadata)`, as another program or dslc version might write it:
    the checksum is recomputed, so only the edit itself is wrong."""
    raw = path.read_bytes()
    tensors = st_load(raw)
    metadata = json.loads(raw[8 : data_offset(path)])["__metadata__"]
    meta = json.loads(metadata["dslc"])
    edit(meta)
    metadata["dslc"] = json.dumps(meta)
    metadata["dslc.sha256"] = ckpt.checksum(tensors, metadata["dslc"])
    path.write_bytes(st_save(tensors, metadata=metadata))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".dslc-export-"))


# ---------------------------------------------------------------- debris of interrupted writes

KILLED_WRITE = """
    import os, signal, sys
    from dslc.fileio import write_atomic

    real_write = os.write

    def write_then_die(fd, data):  # the process dies (kill -9) in the middle of writing the file
        real_write(fd, bytes(data[:10]))
        os.kill(os.getpid(), signal.SIGKILL)

    os.write = write_then_die
    write_atomic(sys.argv[1], b"x" * 1000)
"""


def interrupted_write(path: Path) -> None:
    """Leave the temp file a write of `path` leaves when it is killed: made by the real writer, killed mid-write."""
    assert python(KILLED_WRITE, str(path)).returncode == -signal.SIGKILL


def test_a_write_killed_midway_leaves_the_old_file_and_only_debris(tmp_path):
    target = tmp_path / "metrics.jsonl"
    target.write_text('{"epoch": 1}\n')
    interrupted_write(target)
    assert target.read_text() == '{"epoch": 1}\n'
    (debris,) = [p for p in tmp_path.iterdir() if p != target]
    assert debris.name.startswith(".metrics.jsonl.") and debris.read_bytes() == b"x" * 10
    assert remove_debris(tmp_path) == [debris] and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_resume_and_fresh_runs_remove_the_debris_of_interrupted_writes(tmp_path):
    user_files = ["notes.tmp", ".notes.tmp", "epoch-0009.safetensors.tmp", ".dslc-export-mine", ".dslc-export-x"]

    def make_debris(out: Path) -> None:
        interrupted_write(out / "checkpoints" / "epoch-0003.safetensors")
        interrupted_write(out / "metrics.jsonl")
        staging = Path(tempfile.mkdtemp(prefix=".dslc-export-", dir=out))  # as the export makes it
        (staging / "mlp.onnx").write_bytes(b"half")
        (out / ".mlp.safetensors.tmp").write_bytes(b"")  # what older versions wrote the weights through
        for name in user_files:
            (out / name).mkdir() if name.startswith(".dslc") else (out / name).write_text("mine")
        assert len(leftovers(out / "checkpoints")) == 1 and len(leftovers(out)) == 3 + len(user_files)

    # a fresh run into a folder that holds debris (and no checkpoint)
    fresh = tmp_path / "fresh"
    (fresh / "checkpoints").mkdir(parents=True)
    make_debris(fresh)
    code, output = train(str(MLP), "--out", str(fresh), "--epochs", "1", "--quiet")
    assert code == 0, output
    assert "removed 4 leftover(s) of an interrupted write" in output
    assert leftovers(fresh / "checkpoints") == [] and leftovers(fresh) == sorted(user_files)
    # a resumed run
    out = trained(tmp_path, epochs=1)
    make_debris(out)
    code, output = train(str(MLP), "--out", str(out), "--epochs", "1", "--resume", "--quiet")
    assert code == 0, output
    assert leftovers(out / "checkpoints") == [] and leftovers(out) == sorted(user_files)
    assert all((out / name).exists() for name in user_files)


# ---------------------------------------------------------------- checkpoint integrity


@pytest.mark.parametrize("flipped", [1, 20])
def test_a_damaged_checkpoint_is_refused_and_the_one_before_it_resumed(tmp_path, flipped):
    out = trained(tmp_path, epochs=3)
    uninterrupted = load_file(out / "mlp.safetensors")
    last = out / "checkpoints" / "epoch-0003.safetensors"
    flip_bytes(last, flipped)
    with pytest.raises(ckpt.CheckpointError, match="does not match its checksum"):
        ckpt.load(last)
    code, output = train(str(MLP), "--out", str(out), "--epochs", "3", "--resume", "--quiet")
    assert code == 0, output
    assert f"warning: checkpoint {last} is corrupt" in output
    assert "resuming from epoch-0002.safetensors instead" in output and "resumed from" in output
    # epoch 3 trained again from epoch 2: the same weights as the run that was never damaged
    resumed = load_file(out / "mlp.safetensors")
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    assert ckpt.load(last)[2]["epoch"] == 3  # rewritten, sound


def test_no_usable_checkpoint_is_an_error_naming_each_file(tmp_path):
    out = trained(tmp_path, epochs=2)
    first, second = ckpt.checkpoints(out / "checkpoints")
    flip_bytes(first, 1)
    second.write_bytes(second.read_bytes()[:100])  # torn
    code, output = train(str(MLP), "--out", str(out), "--epochs", "2", "--resume", "--quiet")
    assert code == 1 and "Traceback" not in output and "internal error" not in output
    assert f"no usable checkpoint in {out / 'checkpoints'}" in output
    assert "epoch-0001.safetensors is corrupt: its content does not match its checksum" in output
    assert "epoch-0002.safetensors is corrupt or incomplete" in output


def test_missing_or_renamed_metadata_is_a_clear_error(tmp_path):
    out = trained(tmp_path, epochs=1)
    (path,) = ckpt.checkpoints(out / "checkpoints")
    rewrite_metadata(path, lambda meta: meta.update(hist=meta.pop("history")))
    code, output = train(str(MLP), "--out", str(out), "--epochs", "1", "--resume", "--quiet")
    assert code == 1 and "KeyError" not in output and "internal error" not in output
    assert f"no usable checkpoint in {path.parent}: {path.name} lacks the metadata 'history'" in output
    # the checksum itself renamed
    raw = path.read_bytes()
    metadata = json.loads(raw[8 : data_offset(path)])["__metadata__"]
    metadata["sha256"] = metadata.pop("dslc.sha256")
    path.write_bytes(st_save(st_load(raw), metadata=metadata))
    code, output = train(str(MLP), "--out", str(out), "--epochs", "1", "--resume", "--quiet")
    assert code == 1 and "lacks the metadata 'dslc.sha256'" in output and "internal error" not in output


# ---------------------------------------------------------------- one run at a time per folder


def test_a_second_run_into_a_folder_in_use_is_refused_and_kill_9_frees_it(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "dslc.cli", "train", str(MLP), "--out", str(out), "--epochs", "100000", "--quiet"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while lock_holder(out) != first.pid and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock_holder(out) == first.pid, "the first run did not take the folder's lock"
        for extra in ([], ["--resume"]):
            code, output = train(str(MLP), "--out", str(out), "--epochs", "100000", "--quiet", *extra)
            assert code == 1, output
            assert f"run folder {out} is in use by another run (pid {first.pid})" in output
        assert first.poll() is None  # still training, undisturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert lock_folder(out)  # the kernel released the lock of the killed run
    unlock_folder(out)


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the training processes through /proc")
@pytest.mark.slow  # several processes of training: in CI's slow step, to keep the fast suite in 8 minutes
def test_processes_of_a_killed_nproc_command_take_its_lock_over(tmp_path):
    """`dslc train --nproc 2` holds the lock for its processes; kill -9 of the command leaves them running (torchrun
    and its workers live on), and rank 0 then holds the lock itself, so no other run can start in the folder."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "dslc.cli", "train", str(MLP), "--out", str(out), "--epochs", "100000", "--nproc",
               "2", "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    spawned: list[int] = []
    try:
        wait_for(lambda: lock_holder(out) == launcher.pid, "the command to take the lock")
        wait_for(lambda: ckpt.checkpoints(out / "checkpoints") or launcher.poll() is not None, "a first checkpoint")
        assert launcher.poll() is None, "the run ended early"
        spawned = [p for torchrun in children(launcher.pid) for p in [torchrun, *children(torchrun)]]
        launcher.kill()
        launcher.wait()
        wait_for(lambda: lock_holder(out) in spawned, "rank 0 to take the lock over")
        code, output = train(str(MLP), "--out", str(out), "--epochs", "100000", "--resume", "--quiet")
        assert code == 1 and f"in use by another run (pid {lock_holder(out)})" in output
    finally:
        for pid in spawned:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        launcher.kill()
        launcher.wait()
    wait_for(
        lambda: not any(Path(f"/proc/{pid}").exists() and _running(pid) for pid in spawned), "the processes to end"
    )


def _running(pid: int) -> bool:
    """Not a zombie (a killed child of a killed parent stays listed until reaped by init)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_failed_train_command_leaves_no_empty_run_folder(tmp_path, write_spec):
    spec = write_spec("model m { input x: float32[batch, 2]  output y = x -> Linear(1) }\n", "no_train.model")
    code, output = train(str(spec), "--out", str(tmp_path / "run"))
    assert code == 1 and "has no train section" in output
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- a full disk

DISK_FULL = """
    import errno, os, sys
    from dslc.cli import main

    real_write = os.write

    def write(fd, data):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(sys.argv[1]):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    os.write = write
    main(sys.argv[2:])
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to tell which file a write goes to")
def test_a_full_disk_is_a_clear_error_and_leaves_the_last_checkpoint_intact(tmp_path):
    """The disk fills up while the second epoch's checkpoint is written. The kernel's ENOSPC is injected at the
    os.write call the atomic writer makes, for that one file only (found through /proc/self/fd), in a separate
    process; everything above it (the writer, the checkpoint code, the training run, the CLI) is the real code."""
    out = tmp_path / "run"
    args = ["train", str(MLP), "--out", str(out), "--epochs", "2", "--quiet"]
    failed = python(DISK_FULL, ".epoch-0002.safetensors.", *args)
    assert failed.returncode == 1, failed.stderr
    assert f"cannot write into {out / 'checkpoints'}: the disk is full" in failed.stderr
    assert "internal error" not in failed.stderr and "Traceback" not in failed.stderr
    # nothing half-written: the first epoch's checkpoint and metrics, no temp file
    assert [p.name for p in ckpt.checkpoints(out / "checkpoints")] == ["epoch-0001.safetensors"]
    assert leftovers(out / "checkpoints") == [] and leftovers(out) == []
    assert ckpt.load(out / "checkpoints" / "epoch-0001.safetensors")[2]["epoch"] == 1
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    # with space again, the run resumes and ends
    code, output = train(*args[1:], "--resume")
    assert code == 0, output
    assert "resumed from" in output and (out / "mlp.onnx").exists()


FILE_SIZE_LIMIT = """
    import resource, sys
    from dslc.errors import DslcError
    from dslc.fileio import write_atomic

    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
    try:
        write_atomic(sys.argv[1], b"x" * 5000)
    except DslcError as exc:
        print(exc.render())
"""


def test_a_write_the_kernel_refuses_leaves_the_old_file_and_no_temp_file(tmp_path):
    """A real failing write: under RLIMIT_FSIZE the kernel refuses to grow a file past the limit (EFBIG; Python
    ignores SIGXFSZ), the same path a full disk takes through the writer."""
    target = tmp_path / "metrics.jsonl"
    target.write_text("old\n")
    result = python(FILE_SIZE_LIMIT, str(target))
    assert result.returncode == 0, result.stderr
    assert f"cannot write {target}: the file would exceed the file size limit" in result.stdout
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


# ---------------------------------------------------------------- --resume with other settings


def test_resume_refuses_every_setting_that_changes_the_result(tmp_path):
    out = trained(tmp_path, epochs=1)
    files = {name: (out / name).read_bytes() for name in ("mlp.py", "mlp_train.py", "config.json", "metrics.jsonl")}
    resume = [str(MLP), "--out", str(out), "--epochs", "1", "--resume", "--quiet"]
    refusals = {
        ("--set", "hidden=6"): "--set hidden: not set in the checkpoint, 6 now",
        ("--set", "optimizer.lr=0.01"): "steps[0].optimizer.lr: 0.05 in the checkpoint, 0.01 now",
        ("--amp",): "--amp: off in the checkpoint, on now",
        ("--batch-size", "8"): "batch_size: 32 in the checkpoint, 8 now",
        ("--seed", "1"): "seed: 0 in the checkpoint, 1 now",
        ("--weights", str(out / "mlp.safetensors")): "--weights cannot be combined with --resume",
    }
    for flags, message in refusals.items():
        code, output = train(*resume, *flags)
        assert code == 1 and message in output and "internal error" not in output, (flags, output)
        assert {name: (out / name).read_bytes() for name in files} == files, flags  # the run folder is untouched
    code, output = train(*resume, "--epochs", "2")  # a later flag wins, as on any command line
    assert code == 1 and "epochs: 1 in the checkpoint, 2 now" in output
    code, output = train(*resume, "--device", "cpu")  # the device changes only the summation order
    assert code == 0, output


# ---------------------------------------------------------------- what the files look like


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_run_files_get_the_umask_mode(tmp_path, umask, mode):
    before = os.umask(umask)
    try:
        out = trained(tmp_path, epochs=1)
    finally:
        os.umask(before)
    written = ["config.json", "metrics.jsonl", "curves.png", "manifest.json", "mlp.safetensors", "mlp.model",
               "mlp_train.py", "mlp.py", "checkpoints/epoch-0001.safetensors"]  # fmt: skip
    assert {name: oct((out / name).stat().st_mode & 0o777) for name in written} == dict.fromkeys(written, oct(mode))


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    path = tmp_path / "spec.model"
    path.write_text("old")
    path.chmod(0o640)
    write_atomic(path, "new")
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["spec.model"]


def test_atomic_write_replaces_a_planted_symlink_and_follows_one_only_when_asked(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    planted = tmp_path / "metrics.jsonl"
    planted.symlink_to(victim)
    write_atomic(planted, "new")
    assert not planted.is_symlink() and planted.read_text() == "new" and victim.read_text() == "precious"
    real = tmp_path / "real.model"
    real.write_text("old")
    link = tmp_path / "link.model"
    link.symlink_to(real)
    write_atomic(link, "new", follow_symlinks=True)  # dslc fmt on a user's linked spec
    assert link.is_symlink() and real.read_text() == "new"


def test_a_crlf_spec_hashes_like_the_checker_trains_and_exports(tmp_path):
    spec = tmp_path / "mlp.model"
    spec.write_bytes(MLP.read_bytes().replace(b"\n", b"\r\n"))
    assert spec_sha256(read_source(spec)) == check_file(spec).sha256
    out = tmp_path / "run"
    code, output = train(str(spec), "--out", str(out), "--epochs", "1", "--quiet")
    assert code == 0, output
    assert (out / "mlp.onnx").exists() and json.loads((out / "manifest.json").read_text())["trained"]


# ---------------------------------------------------------------- CSV files


def load_csv(folder: Path, text: bytes) -> sets.Data:
    (folder / "d.csv").write_bytes(text)
    return sets.load("csv", base=folder, seed=0, path="d.csv", features=("a", "b"), label="y", target=None,
                     standardize=True, validation=0.0)  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"a,b,y\n1,2,0\n3,4\n", ":3: 2 fields, expected 3 as in the header (a, b, y)"),
        (b"a,b,y\n1,2,0\n\n3,4,1,7\n", ":4: 4 fields, expected 3 as in the header (a, b, y)"),
        (b"a,b,y\n1,2,0\n3,4,caf\xe9\n", ":3: not UTF-8 text (byte 0xe9 at column 8)"),
        (b"a,b,y\n1,x,0\n", ":2: column 'b' holds 'x', expected a number"),
        (b"a,b,y\n1,,0\n", ":2: column 'b' is empty, expected a number"),
        (b"a,b,y\n1,nan,0\n", ":2: column 'b' holds 'nan', expected a finite number"),
        (b"a,b,a,y\n1,2,3,0\n", ":1: the header names column 'a' twice"),
    ],
)
def test_csv_problems_are_errors_at_their_line(tmp_path, text, message):
    with pytest.raises(DslcError) as caught:
        load_csv(tmp_path, text)
    assert caught.value.render().startswith(f"error: {tmp_path / 'd.csv'}{message}")


def test_csv_with_crlf_and_a_byte_order_mark_loads(tmp_path):
    data = load_csv(tmp_path, b"\xef\xbb\xbfa,b,y\r\n1,2,0\r\n3,4,1\r\n")
    assert data.train["features"].shape == (2, 2) and data.labels == ["0", "1"]


def test_csv_problem_through_dslc_train(tmp_path, write_spec):
    (tmp_path / "d.csv").write_text("a,b,y\n1,2,0\n3,4\n")
    spec = write_spec(
        "model m { input features: float32[batch, 2]  output logits = features -> Linear(2) }\n"
        'train { data = csv("d.csv", features=["a", "b"], label="y")  loss = cross_entropy(logits, label) }',
        "csv_row.model",  # its own module name: an in-process run imports the generated model code by its stem
    )
    code, output = train(str(spec), "--out", str(tmp_path / "run"))
    assert code == 1 and f"{tmp_path / 'd.csv'}:3: 2 fields, expected 3" in output and "Traceback" not in output


def test_a_spec_named_like_python_is_copied_as_a_model_file(tmp_path):
    """A spec named `x.py` or `decimal.py` must not land in the run folder as importable Python: the
    copy is `<module>.model`, and `<module>.py` is the generated model code."""
    from dslc.training.command import prepare_run

    for name, module in (("x.py", "x"), ("decimal.py", "decimal_model")):
        spec = tmp_path / name
        spec.write_text((SPECS / "mlp.model").read_text())
        out = tmp_path / f"run-{name}"
        prepare_run(spec, out, [], resume=False)
        assert (out / f"{module}.model").read_text() == spec.read_text()
        assert "MODELS = " in (out / f"{module}.py").read_text()
        assert sorted(p.name for p in out.glob("*.py")) == sorted({f"{module}.py", f"{module}_train.py"})


def test_a_refused_weights_option_writes_nothing_into_an_existing_folder(tmp_path):
    """`--weights critic=FILE` for a spec without a model 'critic', or a file that is not there, is refused before
    the run's code is written: a folder of the user's gets no half-started run."""
    from dslc.training.command import prepare_run

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    weights = tmp_path / "d.safetensors"
    weights.write_bytes(b"")
    for items, message in (
        ([f"critic={weights}"], "this spec has no model 'critic'"),
        ([str(tmp_path / "gone.safetensors")], "no file"),
    ):
        with pytest.raises(DslcError, match=message):
            prepare_run(SPECS / "gan.model", out, [], resume=False, flags={"weights": items})
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
