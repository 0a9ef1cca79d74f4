"""`dslc train` end to end with real torch: run folder, resume after kill -9, DDP, AMP, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from dslc.build import load_generated
from dslc.cli import main
from dslc.onnx_reference import ReferenceSession
from tests.conftest import ROOT, SPECS

MLP_DIGITS = """
model net {
    input image: float32[batch, 64]
    output logits = image -> Linear(256) -> ReLU -> Dropout(0.2) -> Linear(10)
}

train {
    data = digits(flatten=true, validation=0.2)
    loss = cross_entropy(logits, label, label_smoothing=0.05)
    optimizer = sgd(lr=0.05, momentum=0.9, nesterov=true)
    schedule = step(every=2, gamma=0.5, warmup=0.5)
    clip_grad_norm = 5.0
    accumulate = 2
    epochs = EPOCHS
    batch_size = 16
    metrics = [accuracy, top_k(2)]
    group fc1 { lr = 0.02 }
}
"""


def train(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["train", *args])
    return result.exit_code, result.output + (
        str(result.exception) if result.exception and result.exit_code not in (0, 1) else ""
    )


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dslc.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT, **kw
    )


def test_run_folder_mlp_regression(tmp_path):
    out = tmp_path / "run"
    code, output = train(str(SPECS / "mlp.model"), "--out", str(out), "--epochs", "3", "--quiet")
    assert code == 0, output
    names = {p.name for p in out.iterdir()}
    assert {
        "mlp.py",
        "mlp_train.py",
        "mlp.model",
        "config.json",
        "metrics.jsonl",
        "curves.png",
        "mlp.onnx",
        "manifest.json",
        "mlp.safetensors",
        "checkpoints",
    } <= names
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert {"train_loss", "val_loss", "mae", "rmse"} <= records[-1].keys()
    assert records[-1]["val_loss"] < 1.0  # standardised target: better than predicting the mean
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["trained"] and manifest["models"][0]["verified"]
    # the exported graph holds the trained weights
    weights = load_file(out / "mlp.safetensors")
    graph = onnx.load(str(out / "mlp.onnx"))
    inits = [onnx.numpy_helper.to_array(i) for i in graph.graph.initializer]
    assert any(
        a.shape == tuple(weights["fc1.weight"].shape) and np.allclose(a, weights["fc1.weight"].numpy()) for a in inits
    )
    # without --resume, a folder holding a run is not overwritten
    code, output = train(str(SPECS / "mlp.model"), "--out", str(out), "--epochs", "1")
    assert code == 1 and "already holds a run" in output


def test_trained_weights_export_in_float16_bfloat16_and_int8(tmp_path):
    """--precision and --quantize write the run's graphs of the trained weights too: here a checkpoint exported
    again with --epochs 0, its fp16 and int8 graphs giving the float32 graph's outputs within their tolerances."""
    first = tmp_path / "first"
    code, output = train(str(SPECS / "mlp.model"), "--out", str(first), "--epochs", "1", "--quiet")
    assert code == 0, output
    out = tmp_path / "again"
    weights = str(first / "mlp.safetensors")
    args = ("--out", str(out), "--epochs", "0", "--weights", weights, "--precision", "fp16", "--quantize", "int8")
    code, output = train(str(SPECS / "mlp.model"), *args)
    assert code == 0, output
    assert "mlp.fp16.onnx: fp16" in output and "mlp.int8.onnx: int8" in output, output
    entry = json.loads((out / "manifest.json").read_text())["models"][0]
    assert entry["fp16"]["onnx"] == "mlp.fp16.onnx" and entry["int8"]["onnx"] == "mlp.int8.onnx"
    x = {"features": np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)}
    run = {name: ort.InferenceSession(out / name).run(None, x)[0] for name in ("mlp.onnx", "mlp.fp16.onnx")}
    trained = ort.InferenceSession(first / "mlp.onnx").run(None, x)[0]
    np.testing.assert_allclose(run["mlp.onnx"], trained, atol=1e-6)  # the checkpoint's weights, not new ones
    assert np.abs(run["mlp.fp16.onnx"] - trained).max() < 1e-2 * max(1.0, np.abs(trained).max())
    # bf16 (no onnxruntime CPU kernels): written beside them by another export, verified in the reference implementation
    code, output = train(str(SPECS / "mlp.model"), "--out", str(tmp_path / "bf16"), "--epochs", "0", "--weights",
                         weights, "--precision", "bf16")  # fmt: skip
    assert code == 0 and "mlp.bf16.onnx: bf16" in output and "onnx's reference implementation matches" in output
    (got,) = ReferenceSession(tmp_path / "bf16" / "mlp.bf16.onnx").run(None, x)
    assert np.abs(got - trained).max() < 0.05 * max(1.0, np.abs(trained).max())


def test_a_refused_variant_after_training_says_how_to_export_again(tmp_path, write_spec):
    """bfloat16 cannot hold x + 1000 - 1000: the export fails after training, and the trained run is kept."""
    spec = write_spec("""
        model m {
            input features: float32[batch, 10]
            output prediction = ((features + 1000.0) - 1000.0) -> Linear(1)
        }

        train {
            data = diabetes(validation=0.2)
            loss = mse(prediction, target)
            optimizer = adam(lr=1e-3)
            epochs = 1
        }
    """)
    out = tmp_path / "run"
    code, output = train(str(spec), "--out", str(out), "--precision", "bf16", "--quiet")
    assert code == 1 and "the bf16 graph of 'm' is not within 5% of PyTorch" in output, output
    assert f"note: the trained weights are saved in {out}: run again with --resume" in output
    code, output = train(str(spec), "--out", str(out), "--resume", "--quiet")
    assert code == 0 and "resumed from" in output and "m.onnx: 3 nodes" in output, output


def test_build_writes_the_same_training_script(tmp_path):
    build_dir, run_dir = tmp_path / "b", tmp_path / "r"
    assert (
        CliRunner().invoke(main, ["build", str(SPECS / "vae.model"), "-o", str(build_dir), "--no-onnx"]).exit_code == 0
    )
    code, output = train(str(SPECS / "vae.model"), "--out", str(run_dir), "--epochs", "1", "--quiet")
    assert code == 0, output
    assert (build_dir / "vae_train.py").read_text() == (run_dir / "vae_train.py").read_text()
    # the exported encoder and decoder carry the trained vae's encoder.* and decoder.* weights
    assert "model 'encoder' takes its 6 parameters and buffers from the trained vae" in output
    weights = {m["name"]: m["weights"] for m in json.loads((run_dir / "manifest.json").read_text())["models"]}
    assert weights == {"vae": "trained", "encoder": "trained (from vae)", "decoder": "trained (from vae)"}
    vae = load_generated(run_dir / "vae.py").MODELS["vae"]()
    vae.load_state_dict(load_file(run_dir / "vae.safetensors"))
    vae.eval()
    image, z = torch.rand(3, 1, 28, 28), torch.randn(3, 20)
    with torch.no_grad():
        _, mu, logvar = vae(image, torch.zeros(3, 20))
        generated = vae.decoder(z)
    latent_mean, latent_logvar = ort.InferenceSession(
        str(run_dir / "encoder.onnx"), providers=["CPUExecutionProvider"]
    ).run(None, {"image": image.numpy()})
    np.testing.assert_allclose(latent_mean, mu.numpy(), atol=1e-5)
    np.testing.assert_allclose(latent_logvar, logvar.numpy(), atol=1e-5)
    (decoded,) = ort.InferenceSession(str(run_dir / "decoder.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"z": z.numpy()}
    )
    np.testing.assert_allclose(
        decoded, (generated[0] if isinstance(generated, tuple) else generated).numpy(), atol=1e-5
    )
    # and the built script runs on its own
    proc = subprocess.run(
        [sys.executable, str(build_dir / "vae_train.py"), "--epochs", "1", "--quiet"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert (build_dir / "vae.onnx").exists() and (build_dir / "metrics.jsonl").exists()


def test_gan_alternating_steps(tmp_path):
    out = tmp_path / "gan"
    code, output = train(str(SPECS / "gan.model"), "--out", str(out), "--epochs", "2", "--quiet")
    assert code == 0, output
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"train_loss_discriminator", "train_loss_generator"} <= record.keys()
    assert (out / "generator.onnx").exists() and (out / "discriminator.onnx").exists()
    script = (out / "gan_train.py").read_text()
    assert "backward(inputs=params_discriminator)" in script and "fake.detach()" in script


def test_seq2seq_teacher_forcing_learns(tmp_path):
    out = tmp_path / "s2s"
    code, output = train(str(SPECS / "seq2seq_reverse.model"), "--out", str(out), "--epochs", "3", "--quiet")
    assert code == 0, output
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["accuracy"] > 0.3 and record["perplexity"] < 8  # chance: 0.1 and 10
    assert "F.pad(target[:, :-1], (1, 0), value=1)" in (out / "seq2seq_reverse_train.py").read_text()


def test_amp_bf16_on_cpu(tmp_path):
    out = tmp_path / "amp"
    code, output = train(str(SPECS / "rnn.model"), "--out", str(out), "--epochs", "1", "--amp", "--quiet")
    assert code == 0, output
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(record["train_loss"]) and record["accuracy"] > 0.4


def test_text_vocab_stored_with_the_model(tmp_path, write_spec):
    lines = [
        f"{'pos' if i % 2 else 'neg'}\t{'good great fine' if i % 2 else 'bad awful poor'} words {i}" for i in range(60)
    ]
    (tmp_path / "reviews.tsv").write_text("\n".join(lines) + "\n")
    spec = write_spec("""
        model clf {
            input tokens: int64[batch, time]
            output logits = mean(tokens -> Embedding(200, 8), dim=time) -> Linear(2)
        }
        train { data = text("reviews.tsv", max_len=6)  loss = cross_entropy(logits, label)  epochs = 2  metrics = [accuracy] }
    """)
    out = tmp_path / "run"
    code, output = train(str(spec), "--out", str(out), "--quiet")
    assert code == 0, output
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab[:2] == ["<pad>", "<unk>"] and "good" in vocab
    meta = {p.key: p.value for p in onnx.load(str(out / "clf.onnx")).metadata_props}
    assert json.loads(meta["dslc.vocab"]) == vocab
    assert json.loads((out / "manifest.json").read_text())["models"][0]["vocab"] == vocab


# ---------------------------------------------------------------- bad input


def test_bad_input_messages(tmp_path, write_spec):
    (tmp_path / "d.csv").write_text("a,b,y\n1,2,0\n3,4,5\n5,6,1\n7,8,2\n")
    model = "model m { input features: float32[batch, 2]  output logits = features -> Linear(3) }\n"
    bad_column = write_spec(
        model + 'train { data = csv("d.csv", features=["a", "bb"], label="y")  loss = cross_entropy(logits, label) }',
        "c.model",
    )
    code, output = train(str(bad_column), "--out", str(tmp_path / "r1"))
    assert code == 1 and "no column 'bb'" in output and "did you mean 'b'" in output and "Traceback" not in output
    # y has 4 distinct values: ids 0..3, but the model has 3 outputs
    bad_label = write_spec(
        model
        + 'train { data = csv("d.csv", features=["a", "b"], label="y", validation=0.0)  loss = cross_entropy(logits, label) }',
        "l.model",
    )
    code, output = train(str(bad_label), "--out", str(tmp_path / "r2"))
    assert code == 1 and "class id 3, outside [0, 3)" in output
    nan = write_spec(
        model + 'train { data = csv("d.csv", features=["a", "b"], target="y", validation=0.0, standardize=false)\n'
        "  loss = mse(logits[:, :1], target)  optimizer = sgd(lr=1e12)  epochs = 3 }",
        "n.model",
    )
    del nan  # indexing is not a train expression: use a regression model instead
    reg = write_spec(
        "model m { input features: float32[batch, 2]  output y = features -> Linear(1) }\n"
        'train { data = csv("d.csv", features=["a", "b"], target="y", validation=0.0, standardize=false)\n'
        "  loss = mse(y, target)  optimizer = sgd(lr=1e12)  epochs = 3  batch_size = 2 }",
        "n.model",
    )
    code, output = train(str(reg), "--out", str(tmp_path / "r3"))
    assert code == 1 and "became" in output and ("nan" in output or "inf" in output)


def test_resume_refuses_changed_spec_and_corrupt_checkpoint(tmp_path):
    spec = tmp_path / "mlp.model"
    spec.write_text((SPECS / "mlp.model").read_text())
    out = tmp_path / "run"
    assert train(str(spec), "--out", str(out), "--epochs", "2", "--quiet")[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".dslc-lock"}
    spec.write_text(spec.read_text().replace("const hidden = 5", "const hidden = 6"))
    code, output = train(str(spec), "--out", str(out), "--epochs", "2", "--resume", "--set", "optimizer.lr=0.5")
    assert code == 1 and "the spec changed" in output
    # each change with its old and new value: the spec's line from the run's copy, the setting from the checkpoint
    line = spec.read_text().splitlines().index("const hidden = 6") + 1
    assert f"note: spec line {line}: `const hidden = 5` in the run's copy, `const hidden = 6` now" in output
    assert "note: steps[0].optimizer.lr: 0.05 in the checkpoint, 0.5 now" in output
    spec.write_text((SPECS / "mlp.model").read_text())
    code, output = train(str(spec), "--out", str(out), "--epochs", "3", "--amp", "--resume")
    assert code == 1 and "the training settings changed" in output
    assert (
        "note: epochs: 2 in the checkpoint, 3 now" in output and "note: --amp: off in the checkpoint, on now" in output
    )
    # a refused resume writes nothing, not even the training script
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".dslc-lock"} == before
    # a torn last checkpoint: the one before it is resumed
    first, last = sorted((out / "checkpoints").iterdir())
    last.write_bytes(last.read_bytes()[:100])
    code, output = train(str(spec), "--out", str(out), "--epochs", "2", "--resume")
    assert code == 0 and f"checkpoint {last} is corrupt or incomplete" in output and "Traceback" not in output
    assert "resuming from epoch-0001.safetensors instead" in output
    # none usable: an error, and nothing lost
    for path in (first, last):
        path.write_bytes(path.read_bytes()[:100])
    code, output = train(str(spec), "--out", str(out), "--epochs", "2", "--resume")
    assert code == 1 and "no usable checkpoint" in output and "Traceback" not in output
    assert (out / "metrics.jsonl").exists() and (out / "mlp.onnx").exists()  # nothing lost


# ---------------------------------------------------------------- kill -9 and resume


@pytest.mark.slow  # several processes of training: in CI's slow step, to keep the fast suite in 8 minutes
def test_kill_and_resume_is_bit_exact(tmp_path):
    spec = tmp_path / "net.model"
    spec.write_text(MLP_DIGITS.replace("EPOCHS", "10"))
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert cli("train", str(spec), "--out", str(full), "--quiet").returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "dslc.cli", "train", str(spec), "--out", str(killed), "--quiet"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 120
    while (
        not (killed / "checkpoints" / "epoch-0002.safetensors").exists()
        and time.time() < deadline
        and proc.poll() is None
    ):
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "net.onnx").exists()
    resumed = cli("train", str(spec), "--out", str(killed), "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    a, b = load_file(full / "net.safetensors"), load_file(killed / "net.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (full / "metrics.jsonl").read_text().count("\n") == (killed / "metrics.jsonl").read_text().count("\n") == 10


# ---------------------------------------------------------------- several processes


@pytest.mark.slow  # several processes of training: in CI's slow step, to keep the fast suite in 8 minutes
def test_two_processes_match_one(tmp_path):
    spec = tmp_path / "mlp.model"
    spec.write_text((SPECS / "mlp.model").read_text().replace("momentum=0.9", "momentum=0.9, weight_decay=0.001"))
    one = cli("train", str(spec), "--out", str(tmp_path / "one"), "--epochs", "3", "--quiet")
    assert one.returncode == 0, one.stderr
    two = cli("train", str(spec), "--out", str(tmp_path / "two"), "--epochs", "3", "--nproc", "2", "--quiet")
    assert two.returncode == 0, two.stderr + two.stdout
    a, b = load_file(tmp_path / "one" / "mlp.safetensors"), load_file(tmp_path / "two" / "mlp.safetensors")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), (key, (a[key] - b[key]).abs().max())
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2


# ---------------------------------------------------------------- learning


@pytest.mark.slow
def test_cnn_reaches_97_percent_on_digits(tmp_path):
    out = tmp_path / "cnn"
    code, output = train(str(SPECS / "cnn.model"), "--out", str(out), "--quiet")
    assert code == 0, output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["accuracy"] for r in records) >= 0.97, records[-1]
    assert records[-1]["accuracy"] >= 0.97
    assert json.loads((out / "manifest.json").read_text())["models"][0]["verified"]
