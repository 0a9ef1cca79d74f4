"""`dslc train` end to end, part 2: trained weights shared by name with the exported inference models,
early stopping exporting the best epoch, CTC on the speech set (with the cer metric), npz and
token_tags data, and --compile on CPU."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from dslc.build import load_generated
from dslc.cli import main
from dslc.training import checkpoint as ckpt
from dslc.training.runtime import ctc_char_errors, match_state


def train(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["train", *args])
    return result.exit_code, result.output + (
        str(result.exception) if result.exception and result.exit_code not in (0, 1) else ""
    )


def records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def onnx_run(path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


# ---------------------------------------------------------------- weights shared by name

SEQ2SEQ = """
const vocab = 10
const hidden = 24

block Enc() {
    input source: int64[batch, time]
    output state = source -> Embedding(vocab, 8) -> GRU(hidden, returns="last")
}

block Dec() {
    input tokens: int64[batch, steps]
    input state: float32[batch, hidden]
    embedded = tokens -> Embedding(vocab, 8)
    outputs, final = (embedded, unsqueeze(state, 0)) -> GRU(hidden, returns="all")
    output logits = outputs -> Linear(vocab)
    output new_state = squeeze(final, 0)
}

model s2s {
    input source: int64[batch, time]
    input target_in: int64[batch, steps]
    state = source -> encoder: Enc()
    logits, final_state = (target_in, state) -> decoder: Dec()
    output logits
}

model encoder {
    input source: int64[batch, time]
    output state = source -> encoder: Enc()
}

model decoder_step {
    input token: int64[batch]
    input state: float32[batch, hidden]
    step_logits, new_state = (unsqueeze(token, 1), state) -> decoder: Dec()
    output logits = squeeze(step_logits, 1)
    output new_state
}

model probe {
    input source: int64[batch, time]
    output scores = source -> Embedding(vocab, 4) -> head: Linear(2)
}

train {
    data = sequences(task="reverse", vocab=vocab, length=5, samples=256)
    target_in = shift_right(target, fill=1)
    loss = cross_entropy(s2s(source, target_in), target)
    optimizer = adam(s2s, lr=1e-2)
    epochs = 1
    batch_size = 32
}
"""


def test_seq2seq_inference_models_get_the_trained_weights(tmp_path, write_spec):
    spec = write_spec(SEQ2SEQ, "s2s.model")
    out = tmp_path / "run"
    code, output = train(str(spec), "--out", str(out), "--quiet")
    assert code == 0, output
    assert "model 'encoder' takes its" in output and "model 'decoder_step' takes its" in output
    # no silent success: the model without trained counterparts says so, and why
    assert (
        "warning: model 'probe' keeps its initial, untrained weights" in output
        and "no trained counterpart in s2s" in output
    )
    weights = {m["name"]: m["weights"] for m in json.loads((out / "manifest.json").read_text())["models"]}
    assert weights == {
        "s2s": "trained",
        "encoder": "trained (from s2s)",
        "decoder_step": "trained (from s2s)",
        "probe": "initial",
    }
    trained = load_file(out / "s2s.safetensors")
    for name in ("encoder", "decoder_step"):
        for key, value in load_file(out / f"{name}.safetensors").items():
            assert torch.equal(value, trained[key]), (name, key)
    # the ONNX encoder computes what the trained model's encoder part computes
    module = load_generated(out / "s2s.py")
    s2s = module.MODELS["s2s"]()
    s2s.load_state_dict(trained)
    s2s.eval()
    source = torch.randint(2, 10, (3, 5))
    with torch.no_grad():
        state = s2s.encoder(source)
        state = state[0] if isinstance(state, tuple) else state
        full = s2s(source, torch.ones(3, 1, dtype=torch.long))
    (onnx_state,) = onnx_run(out / "encoder.onnx", {"source": source.numpy()})
    np.testing.assert_allclose(onnx_state, state.numpy(), atol=1e-5)
    # one greedy step from bos equals the teacher-forced model's first step
    step_logits, _ = onnx_run(out / "decoder_step.onnx", {"token": np.ones(3, dtype=np.int64), "state": onnx_state})
    np.testing.assert_allclose(step_logits, full[:, 0].numpy(), atol=1e-4)
    script = (out / "s2s_train.py").read_text()
    assert 'run.share_trained_weights(models, trained=["s2s"], into=["encoder", "decoder_step", "probe"])' in script


def test_match_state_reasons():
    a = {"w": torch.ones(2, 3), "b": torch.zeros(2)}
    found, origins, problem = match_state({"w": torch.zeros(2, 3)}, {"m": a})
    assert problem == "" and origins == ["m"] and torch.equal(found["w"], a["w"])
    assert "differ in shape" in match_state({"w": torch.zeros(3, 2)}, {"m": a})[2]
    assert "no trained counterpart" in match_state({"v": torch.zeros(1)}, {"m": a})[2]
    assert "different trained values" in match_state({"b": torch.zeros(2)}, {"m": a, "n": {"b": torch.ones(2)}})[2]
    assert match_state({"b": torch.zeros(2)}, {"m": a, "n": {"b": torch.zeros(2)}})[0] is not None  # equal copies agree


# ---------------------------------------------------------------- early stopping exports the best epoch

OVERFIT = """
model net {
    input image: float32[batch, 64]
    output logits = image -> Linear(256) -> ReLU -> Linear(256) -> ReLU -> Linear(10)
}

train {
    data = digits(flatten=true, validation=0.9)   # 180 training images: overfits within a few epochs
    loss = cross_entropy(logits, label)
    optimizer = adam(lr=0.01)
    epochs = 30
    batch_size = 16
    early_stopping = 2
    keep_checkpoints = 1
}
"""


def test_early_stopping_exports_the_best_epoch(tmp_path, write_spec):
    spec = write_spec(OVERFIT, "net.model")
    out = tmp_path / "run"
    code, output = train(str(spec), "--out", str(out), "--quiet")
    assert code == 0, output
    history = records(out)
    losses = [r["val_loss"] for r in history]
    best = int(np.argmin(losses))
    assert len(history) < 30 and best == len(history) - 3  # stopped 2 epochs after the best
    weights, _, meta = ckpt.load(out / "checkpoints" / "best.safetensors")
    assert meta["epoch"] == best + 1 and meta["monitor"] == "val_loss"
    exported = load_file(out / "net.safetensors")
    for key, value in weights["net"].items():
        assert torch.equal(exported[key], value), key
    last, _, _ = ckpt.load(ckpt.checkpoints(out / "checkpoints")[-1])
    assert not torch.equal(last["net"]["fc1.weight"], exported["fc1.weight"])  # not the last epoch's weights
    assert f"exporting the weights of epoch {best + 1}, the best by val_loss" in output
    assert f"exported (best, epoch {best + 1})" in output
    # and the ONNX graph holds them
    x = torch.rand(2, 64)
    module = load_generated(out / "net.py")
    net = module.MODELS["net"]()
    net.load_state_dict(weights["net"])
    net.eval()
    (logits,) = onnx_run(out / "net.onnx", {"image": x.numpy()})
    np.testing.assert_allclose(logits, net(x).detach().numpy(), atol=1e-4)


# ---------------------------------------------------------------- CTC, npz, token_tags

SPEECH = """
model asr {
    input features: float32[batch, time, 20]
    # a DeepSpeech-like stack: a 1-D convolution over time, a bidirectional GRU, per-frame character logits
    h = features -> Permute(0, 2, 1) -> front: Conv1d(32, kernel=3, padding=1) -> ReLU -> Permute(0, 2, 1)
    output logits = h -> rnn: GRU(48, bidirectional=true) -> classifier: Linear(27)
}

train {
    data = speech(features=20, max_chars=4, samples=480, validation=0.2)
    loss = ctc(logits, transcript, feature_lengths, transcript_lengths)
    optimizer = adam(lr=1e-2)
    clip_grad_norm = 5.0
    epochs = 6
    batch_size = 32
    metrics = [cer]
}
"""


def test_ctc_speech_learns(tmp_path, write_spec):
    spec = write_spec(SPEECH, "asr.model")
    out = tmp_path / "run"
    code, output = train(str(spec), "--out", str(out), "--quiet")
    assert code == 0, output
    history = records(out)
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"], history
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert history[-1]["cer"] < 0.5 < history[0]["cer"], [r["cer"] for r in history]  # about 0.05 after 6 epochs
    assert json.loads((out / "vocab.json").read_text())[:2] == ["<blank>", "a"]
    script = (out / "asr_train.py").read_text()
    code = re.sub(r"\(\s+", "(", " ".join(script.split()))  # the loss line is wrapped as ruff wraps it
    assert "F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), transcript, feature_lengths, transcript_lengths" in code
    assert "rt.ctc_char_errors(logits, transcript, feature_lengths, transcript_lengths, blank=0)" in script


def test_ctc_char_errors():
    # frames: a a _ b b _ b  -> "abb"; target "ab" -> 1 error; the frames past the length are ignored
    path = torch.tensor([[1, 1, 0, 2, 2, 0, 2, 3]])
    scores = torch.nn.functional.one_hot(path, 4).float()
    assert ctc_char_errors(scores, torch.tensor([[1, 2, 0]]), torch.tensor([7]), torch.tensor([2])) == 1
    assert ctc_char_errors(scores, torch.tensor([[1, 2, 2, 3]])) == 0  # all frames, target = the non-blank ids


def test_npz_data(tmp_path, write_spec):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 6)).astype(np.float64)  # float64 arrives as float32
    np.savez(tmp_path / "d.npz", x=x, y=(x[:, 0] + x[:, 1] > 0).astype(np.int32))
    spec = write_spec(
        """
        model clf { input x: float32[batch, 6]  output logits = x -> Linear(16) -> ReLU -> Linear(2) }
        train { data = npz("d.npz", validation=0.25)  loss = cross_entropy(logits, y)  optimizer = adam(lr=0.02)
                epochs = 5  batch_size = 16  metrics = [accuracy] }
    """,
        "clf.model",
    )
    out = tmp_path / "run"
    code, output = train(str(spec), "--out", str(out), "--quiet")
    assert code == 0, output
    assert records(out)[-1]["accuracy"] > 0.85


def test_token_tags_data(tmp_path, write_spec):
    spec = write_spec(
        """
        model tagger {
            input tokens: int64[batch, time]
            output logits = tokens -> Embedding(50, 16) -> GRU(32, bidirectional=true) -> Linear(4)
        }
        train { data = token_tags(vocab=50, length=8, classes=4, samples=600)  loss = cross_entropy(logits, tags)
                optimizer = adam(lr=0.01)  epochs = 4  batch_size = 32  metrics = [accuracy] }
    """,
        "tagger.model",
    )
    out = tmp_path / "run"
    code, output = train(str(spec), "--out", str(out), "--quiet")
    assert code == 0, output
    history = records(out)
    assert history[-1]["accuracy"] > 0.5 and history[-1]["val_loss"] < history[0]["val_loss"]  # chance: 0.25


# ---------------------------------------------------------------- torch.compile on CPU


def _inductor_unavailable() -> str | None:
    if shutil.which("gcc") is None and shutil.which("cc") is None and shutil.which("g++") is None:
        return "torch.compile (inductor) needs a C++ compiler, and none is on PATH"
    return None


@pytest.mark.slow  # inductor compiles the model: about 30 s of CPU
@pytest.mark.skipif(_inductor_unavailable() is not None, reason=_inductor_unavailable() or "")
def test_compile_one_epoch_on_cpu(tmp_path):
    from tests.conftest import SPECS

    out = tmp_path / "run"
    code, output = train(str(SPECS / "mlp.model"), "--out", str(out), "--epochs", "1", "--compile", "--quiet")
    assert code == 0, output
    record = records(out)[-1]
    assert np.isfinite(record["train_loss"]) and record["val_loss"] < 2.0
    assert json.loads((out / "manifest.json").read_text())["models"][0]["verified"]
    # the checkpoints and exports hold the plain module's names, not torch.compile's `_orig_mod.` prefix
    assert all(not k.startswith("_orig_mod") for k in load_file(out / "mlp.safetensors"))
