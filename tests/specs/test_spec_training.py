"""Every spec trains end to end: a short `dslc train` on a small subset of its data set lowers the
loss (first vs last train_loss of metrics.jsonl), beats chance on its metric, and ends with
verified ONNX graphs; the trained graphs then do their job through the dslc runtime (CTC decoding,
greedy seq2seq decoding, sampling, generation). The RL policy trains by REINFORCE on CartPole-v1 (its episodes data
set), so its check is the mean episode return, not the loss (tests/training/test_policy.py trains it to solved).

The short runs use tiny subsets (`--set data.samples=N`) and 2 epochs, so the whole file takes a
few minutes on 2 CPU cores; the learning checks marked slow train longer.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from dslc.cli import main
from dslc.training.runtime import edit_distance

from .conftest import FIXTURES, ROOT, SPEC_FILES, SPECS_DIR, by_stem

BOS = 1
NO_EOS = -1  # the generated sequence tasks have fixed-length targets and no end token


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    metric: str | None = None  # key in metrics.jsonl
    better_than: float | None = None  # chance level (or a trivial predictor's score)
    higher_is_better: bool = True
    notes: str = ""
    extra: dict = field(default_factory=dict)


SEQ_SUBSET = ("--set", "data.samples=1200")
# a narrower front end and GRUs on 40 bins and 5-character utterances; small batches give CTC the steps it needs to
# leave the all-blank plateau (cer 1.0): measured cer 0.06 after 3 epochs
DEEPSPEECH_SMALL = (
    "--epochs",
    "3",
    "--batch-size",
    "8",
    "--set",
    "freq=40",
    "--set",
    "channels=16",
    "--set",
    "hidden=64",
    "--set",
    "optimizer.lr=3e-3",
    "--set",
    "data.max_chars=5",
    "--set",
    "data.samples=300",
)
SHORT: dict[str, Case] = {
    "mlp": Case(("--epochs", "2"), "rmse", 1.0, False, "diabetes; rmse of predicting the mean is 1.0 (standardised)"),
    "cnn": Case(("--epochs", "2"), "accuracy", 0.3, notes="digits 28x28; chance 0.1"),
    "rnn": Case(("--epochs", "2", "--set", "data.samples=1000"), "accuracy", 0.6, notes="sequence_classes; chance 0.5"),
    # text_classes over 200 ids (the models keep their vocabularies): every id is seen often in a small subset
    "bilstm_classifier": Case(
        ("--epochs", "2", "--set", "data.samples=800", "--set", "data.vocab=200"),
        "accuracy",
        0.6,
        notes="text_classes; chance 0.5",
    ),
    "transformer_encoder": Case(
        ("--epochs", "2", "--set", "data.samples=800", "--set", "data.vocab=200"),
        "accuracy",
        0.6,
        notes="text_classes; chance 0.5",
    ),
    "autoencoder": Case(
        (
            "--epochs",
            "2",
        ),
        "mae",
        0.25,
        False,
        notes="digits 28x28 reconstruction",
    ),
    "vae": Case(
        (
            "--epochs",
            "2",
        ),
        "mse",
        0.15,
        False,
        notes="digits 28x28 reconstruction",
    ),
    "gan": Case(
        (
            "--epochs",
            "2",
        )
    ),
    "seq2seq_reverse": Case(("--epochs", "2", *SEQ_SUBSET), "accuracy", 0.15, notes="reverse, 10 symbols; chance 0.1"),
    "seq2seq": Case(("--epochs", "2", *SEQ_SUBSET), "accuracy", 0.12, notes="reverse, 14 symbols; chance 0.07"),
    "seq2seq_attention": Case(
        ("--epochs", "2", *SEQ_SUBSET), "accuracy", 0.12, notes="reverse, 14 symbols; chance 0.07"
    ),
    "transformer": Case(("--epochs", "2", *SEQ_SUBSET), "accuracy", 0.12, notes="reverse, 14 symbols; chance 0.07"),
    "rvae": Case(("--epochs", "2", *SEQ_SUBSET), "accuracy", 0.08, notes="sorted sequences, 30 symbols; chance 0.033"),
    "text_generator": Case(
        ("--epochs", "2", "--set", "data.samples=600"),
        "accuracy",
        0.03,
        notes="sorted sequences, 94 symbols; chance 0.011",
    ),
    "bert_classifier": Case(
        ("--epochs", "3", "--set", "data.samples=1500", "--set", "data.vocab=200", "--set", "data.length=16"),
        "accuracy",
        0.6,
        notes="text_classes; chance 0.5",
    ),
    "resnet18": Case(
        ("--epochs", "2", "--set", "classes=10", "--set", "image_size=32"),
        "accuracy",
        0.3,
        notes="digits 32x32 RGB; chance 0.1",
    ),
    "mobilenet_v2": Case(
        ("--epochs", "2", "--set", "classes=10", "--set", "image_size=32"),
        "accuracy",
        0.2,
        notes="digits 32x32 RGB; chance 0.1",
    ),
    "vit": Case(("--epochs", "3"), "accuracy", 0.25, notes="digits 32x32 RGB; chance 0.1"),
    "squeezenet": Case(
        ("--epochs", "3", "--set", "classes=10", "--set", "image_size=32"),
        "accuracy",
        0.25,
        notes="digits 32x32 RGB; chance 0.1",
    ),
    # 21M parameters at hidden=256, about a minute (slow step): measured 0.45 after 2 epochs
    "vgg": Case(
        ("--epochs", "2", "--set", "classes=10", "--set", "image_size=32", "--set", "hidden=256"),
        "accuracy",
        0.25,
        notes="digits 32x32 RGB; chance 0.1",
    ),
    "gpt2": Case(
        ("--epochs", "2", "--set", "data.samples=600", "--set", "layers=2"),
        "accuracy",
        0.012,
        notes="sorted sequences, 254 symbols; chance 0.004",
    ),
    "llama": Case(
        ("--epochs", "2", "--set", "data.samples=600", "--set", "layers=2"),
        "accuracy",
        0.012,
        notes="sorted sequences, 254 symbols; chance 0.004",
    ),
    "unet": Case(("--epochs", "2"), "mae", 0.2, False, notes="denoising digits 28x28; the noisy input's mae is 0.24"),
    # the runtime decoding is checked below; the spec's own settings are trained in a slow test
    "deepspeech": Case(DEEPSPEECH_SMALL, "cer", 0.5, False, notes="speech; all-blank output has cer 1.0"),
    # 200 episodes of CartPole-v1 (measured: 23.0, then 59.3); the REINFORCE loss need not fall
    "policy": Case(("--epochs", "2"), "episode_return", 40.0, notes="CartPole-v1; a random policy averages ~22"),
}


def test_every_spec_has_a_training_test():
    stems = {p.stem for p in SPEC_FILES}
    assert stems == set(SHORT)


def train(spec: str, out: Path, *args: str) -> str:
    """`dslc train` in this process; the run folder's model module is imported by its stem, so
    forget earlier imports of that name (another run may have used other constants)."""
    stem = Path(spec).stem
    sys.modules.pop(stem, None)
    try:
        result = CliRunner().invoke(main, ["train", spec, "--out", str(out), "--quiet", *args])
    finally:
        sys.modules.pop(stem, None)
    assert result.exit_code == 0, result.output + (repr(result.exception) if result.exception else "")
    return result.output


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """trained(stem) -> the run folder of its short training run (trained once per session)."""
    cache: dict[str, Path] = {}

    def get(stem: str) -> Path:
        if stem not in cache:
            out = tmp_path_factory.mktemp(f"train-{stem}") / "run"
            train(str(SPECS_DIR / f"{stem}.model"), out, *SHORT[stem].args)
            cache[stem] = out
        return cache[stem]

    return get


@pytest.mark.parametrize("stem", by_stem(list(SHORT)))
def test_short_training_lowers_the_loss_and_exports_verified_onnx(trained, stem):
    case = SHORT[stem]
    out = trained(stem)
    history = records(out)
    assert len(history) >= 2
    if stem == "gan":
        # adversarial: the summed loss need not fall; the discriminator must beat chance (2 ln 2)
        assert history[-1]["train_loss_discriminator"] < 2 * np.log(2)
    elif stem == "policy":
        # REINFORCE's loss on standardised returns hovers around 0; the policy improves when its episodes last longer
        assert history[-1]["episode_return"] > history[0]["episode_return"], history
    else:
        assert history[-1]["train_loss"] < history[0]["train_loss"], history
    if case.metric:
        value = history[-1][case.metric]
        assert value > case.better_than if case.higher_is_better else value < case.better_than, (
            case.metric,
            value,
            case.notes,
        )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["trained"]
    for entry in manifest["models"]:
        assert entry["verified"], entry
        onnx.checker.check_model(str(out / entry["onnx"]), full_check=True)


def test_cnn_is_the_networks_of_its_article():
    """Both convolutions 'same' as in the source article: 7x7x64 = 3136 features into dense 128, 421,642 parameters
    (the >= 97% learning check is tests/training/test_train_run.py's slow test_cnn_reaches_97_percent_on_digits)."""
    from dslc.checker import check_file

    (cnn,) = [m for m in check_file(SPECS_DIR / "cnn.model").exported if m.spec_name == "cnn"]
    assert cnn.param_count == 32 * 9 + 32 + 64 * 32 * 9 + 64 + 3136 * 128 + 128 + 128 * 10 + 10 == 421_642


# ---------------------------------------------------------------- trained graphs through the runtime


def test_deepspeech_trained_logits_decode_with_ctc_through_the_runtime(trained):
    """Per-frame logits from the exported graph, CTC-decoded by the runtime, score like the trainer's cer."""
    from dslc_runtime import Model
    from dslc_runtime.tasks import ctc_greedy_decode

    from dslc.data import sets

    out = trained("deepspeech")
    data = sets.load("speech", base=SPECS_DIR, seed=0, features=40, max_chars=5, samples=300, validation=0.1)
    feats = data.val["features"][:16].numpy()
    spectrogram = np.ascontiguousarray(feats.transpose(0, 2, 1)[:, None])  # [batch, 1, freq, frames]
    logits = Model.load(out, model="deepspeech", providers="cpu")(spectrogram=spectrogram)["logits"]
    assert logits.shape == (16, (feats.shape[1] - 1) // 2 + 1, 29)
    frames = (data.val["feature_lengths"][:16].numpy() - 1) // 2 + 1
    texts = ctc_greedy_decode(logits, alphabet="_ 'abcdefghijklmnopqrstuvwxyz", blank=0, lengths=frames)
    assert len(texts) == 16 and all(set(t) <= set(" 'abcdefghijklmnopqrstuvwxyz") for t in texts)
    truth = [
        "".join("abcdefghijklmnopqrstuvwxyz"[c - 1] for c in row[:n])
        for row, n in zip(data.val["transcript"][:16].tolist(), data.val["transcript_lengths"][:16].tolist())
    ]
    cer = sum(edit_distance(a, b) for a, b in zip(texts, truth)) / sum(len(t) for t in truth)
    assert cer <= json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["cer"] + 0.5, (texts[:3], truth[:3])


def _trained_weights_reached(out: Path, stem: str, name: str) -> bool:
    """Whether the exported inference graph `name` holds the trained weights of `stem` (shared names)."""
    from safetensors.torch import load_file

    trained = load_file(out / f"{stem}.safetensors")
    graph = onnx.load(str(out / f"{name}.onnx"))
    inits = [onnx.numpy_helper.to_array(i) for i in graph.graph.initializer]
    big = [v.numpy() for v in trained.values() if v.numel() >= 64]
    return any(any(a.shape == w.shape and np.array_equal(a, w) for a in inits) for w in big)


@pytest.mark.parametrize("stem", ["seq2seq", "seq2seq_attention", "transformer"])
def test_trained_encoder_and_decoder_step_greedy_decode_through_the_runtime(trained, stem):
    from dslc_runtime import Model
    from dslc_runtime.tasks import greedy_decode

    out = trained(stem)
    for name in ("encoder", "decoder_step"):  # dslc train copies the trained weights in by parameter name
        assert _trained_weights_reached(out, stem, name), name
    rng = np.random.default_rng(0)
    source = rng.integers(2, 16, size=(32, 8)).astype(np.int64)
    decoded = greedy_decode(
        Model.load(out, model="encoder", providers="cpu"),
        Model.load(out, model="decoder_step", providers="cpu"),
        source,
        bos=BOS,
        eos=NO_EOS,
        max_len=8,
    )
    assert all(len(row) == 8 for row in decoded)
    accuracy = float((np.array(decoded) == source[:, ::-1]).mean())
    # the same greedy search with the trained PyTorch model must agree token for token
    sys.modules.pop(stem, None)
    from safetensors.torch import load_file

    from dslc.build import load_generated

    model = load_generated(out / f"{stem}.py").MODELS[stem]()
    model.load_state_dict(load_file(out / f"{stem}.safetensors"))
    model.eval()
    prefix = torch.full((32, 1), BOS, dtype=torch.long)
    with torch.no_grad():
        for _ in range(8):
            prefix = torch.cat([prefix, model(torch.from_numpy(source), prefix)[:, -1].argmax(-1, keepdim=True)], 1)
    assert decoded == prefix[:, 1:].tolist()
    assert accuracy > 1 / 14, accuracy  # better than chance after the short run


def test_text_generator_trained_generates_sorted_continuations(trained):
    from dslc_runtime import Model
    from dslc_runtime.tasks import generate

    out = trained("text_generator")
    lm = Model.load(out, model="text_generator", providers="cpu")
    prompt = np.array([[BOS, 5, 9, 14], [BOS, 20, 33, 40]], dtype=np.int64)
    ids = generate(lm, prompt, max_new_tokens=6)
    assert ids.shape == (2, 10) and (ids[:, :4] == prompt).all()
    assert ((ids[:, 4:] >= 2) & (ids[:, 4:] < 96)).all()


def test_gan_trained_generator_samples_through_the_runtime(trained):
    from dslc_runtime import Model
    from dslc_runtime.tasks import sample

    out = trained("gan")
    images = sample(Model.load(out, model="generator", providers="cpu"), n=8, seed=0)
    assert images.shape == (8, 1, 28, 28) and images.min() >= 0.0 and images.max() <= 1.0
    assert images.std(axis=0).mean() > 1e-3  # different noise, different images


def test_vae_trained_decoder_samples_through_the_runtime(trained):
    from dslc_runtime import Model
    from dslc_runtime.tasks import sample

    out = trained("vae")
    assert _trained_weights_reached(out, "vae", "decoder") and _trained_weights_reached(out, "vae", "encoder")
    images = sample(Model.load(out, model="decoder", providers="cpu"), n=8, seed=0)
    assert images.shape == (8, 1, 28, 28) and images.min() >= 0.0 and images.max() <= 1.0


def test_rvae_trained_graphs_sample_sequences_through_the_runtime(trained):
    from dslc_runtime import Model
    from dslc_runtime.tasks import greedy_decode

    out = trained("rvae")
    for name in ("encoder", "initial_state", "decoder_step"):
        assert _trained_weights_reached(out, "rvae", name), name
    z = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    samples = greedy_decode(
        Model.load(out, model="initial_state", providers="cpu"),
        Model.load(out, model="decoder_step", providers="cpu"),
        z,
        bos=BOS,
        eos=NO_EOS,
        max_len=8,
    )
    assert [len(s) for s in samples] == [8] * 4 and all(2 <= t < 32 for s in samples for t in s)


# ---------------------------------------------------------------- --weights


def _torchvision_style_checkpoint(path: Path) -> None:
    """A state dict with torchvision resnet18's names, shapes and order (fixture), deterministic values."""
    sys.path.insert(0, str(FIXTURES))
    from reference_weights import reference_array

    layout = json.loads((FIXTURES / "resnet18_torchvision.json").read_text())["state_dict"]
    state = {k: torch.from_numpy(reference_array(k, tuple(v["shape"]), v["dtype"])) for k, v in layout.items()}
    torch.save(state, path)


def test_weights_loads_a_torchvision_checkpoint_strictly_and_exports_it(tmp_path):
    from dslc_runtime import Model
    from reference_weights import reference_image
    from safetensors.torch import load_file

    checkpoint = tmp_path / "resnet18.pth"
    _torchvision_style_checkpoint(checkpoint)
    out = tmp_path / "run"
    output = train(str(SPECS_DIR / "resnet18.model"), out, "--epochs", "0", "--weights", str(checkpoint))
    assert "loaded 122 tensors" in output
    expected = np.array(json.loads((FIXTURES / "resnet18_torchvision.json").read_text())["logits"], dtype=np.float32)
    logits = Model.load(out, model="resnet18", providers="cpu")(image=reference_image())["logits"]
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)  # torchvision's logits for these weights

    # strict: a checkpoint for another head is refused with the offending names, nothing is trained
    bad = CliRunner().invoke(
        main,
        [
            "train",
            str(SPECS_DIR / "resnet18.model"),
            "--out",
            str(tmp_path / "bad"),
            "--quiet",
            "--set",
            "classes=10",
            "--set",
            "image_size=32",
            "--epochs",
            "0",
            "--weights",
            str(checkpoint),
        ],
    )
    assert bad.exit_code == 1 and "fc.weight (1000, 512) vs (10, 512)" in bad.output, bad.output
    assert "--ignore-mismatched-sizes" in bad.output  # the hint: what fine-tuning for other classes needs

    # a new head, as HuggingFace's ignore_mismatched_sizes: the rest loads, fc keeps its initialisation
    new_head = tmp_path / "new_head"
    sets = ["--set", "classes=10", "--set", "image_size=32"]
    output = train(str(SPECS_DIR / "resnet18.model"), new_head, *sets, "--epochs", "0", "--weights", str(checkpoint),
                   "--ignore-mismatched-sizes")  # fmt: skip
    assert "loaded 120 tensors" in output and "fc.weight (1000, 512) vs (10, 512), fc.bias (1000,) vs (10,)" in output
    exported = load_file(new_head / "resnet18.safetensors")
    given = torch.load(checkpoint, weights_only=True)
    assert torch.equal(exported["layer4.1.conv2.weight"], given["layer4.1.conv2.weight"])
    assert exported["fc.weight"].shape == (10, 512)


def test_weights_fine_tunes_from_a_safetensors_checkpoint(tmp_path, trained):
    """A trained run's weights (.safetensors) start another run: its first epoch starts where the first run ended."""
    first = trained("rnn")
    out = tmp_path / "again"
    train(
        str(SPECS_DIR / "rnn.model"),
        out,
        "--epochs",
        "1",
        "--set",
        "data.samples=1000",
        "--weights",
        f"rnn={first / 'rnn.safetensors'}",
    )
    assert records(out)[0]["train_loss"] < records(first)[0]["train_loss"]


# ---------------------------------------------------------------- the RL policy


def _policy_main():
    sys.path.insert(0, str(ROOT / "examples"))
    pytest.importorskip("gymnasium")
    import policy_cartpole

    return policy_cartpole.main


def test_policy_example_trains_through_dslc_train_and_the_runtime_plays_it(tmp_path):
    """examples/policy_cartpole.py runs `dslc train` on the spec (its flags as --set values), then plays the exported
    graph with the runtime; training to solved is tests/training/test_policy.py's slow test."""
    args = ["--out", str(tmp_path), "--epochs", "2", "--updates-per-epoch", "1", "--episodes", "4"]
    summary = _policy_main()([*args, "--eval-episodes", "2", "--quiet"])
    assert summary["verified"] and summary["max_abs_diff"] <= 1e-5
    assert summary["eval_episodes"] == 2 and summary["eval_mean_return"] >= 8  # CartPole ends after >= 8 steps
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2 == summary["epochs"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["data"]["episodes_per_update"] == 4 and config["train"]["stop_at"] == 475.0


# ---------------------------------------------------------------- slow learning checks


@pytest.mark.slow
def test_deepspeech_as_documented_learns_to_transcribe(tmp_path):
    """The spec's own sizes and settings (80 bins, 32 channels, GRUs of 128, 2000 utterances), two of its ten
    epochs: the greedy CTC decoding leaves the all-blank output (cer 1.0) far behind (measured: cer 0.03)."""
    train(str(SPECS_DIR / "deepspeech.model"), tmp_path / "run", "--epochs", "2")
    assert records(tmp_path / "run")[-1]["cer"] < 0.5


@pytest.mark.slow
def test_attention_beats_plain_seq2seq_on_the_same_task(tmp_path):
    """Same data (reversing 12 symbols), epochs and optimizer: the attention decoder reaches a
    clearly higher validation token accuracy than the plain encoder-decoder."""
    args = ("--epochs", "3", "--set", "data.samples=3000", "--set", "data.length=12")  # measured: 0.98 vs 0.59
    accuracy = {}
    for stem in ("seq2seq", "seq2seq_attention"):
        train(str(SPECS_DIR / f"{stem}.model"), tmp_path / stem, *args)
        accuracy[stem] = records(tmp_path / stem)[-1]["accuracy"]
    assert accuracy["seq2seq_attention"] > accuracy["seq2seq"] + 0.1, accuracy
