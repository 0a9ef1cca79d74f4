"""Generation with the KV-cache graphs of a dslc build: the runtime's tokens against the PyTorch module's, the
sampling rules against numpy, and hostile `decoder` sections of a manifest refused."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from dslc_runtime import Generator, InputError, ModelError, generate
from dslc_runtime.cli import generate_cli
from dslc_runtime.generation import choose, filter_logits, token_probabilities

from dslc.build import build, load_generated

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
VOCAB = [chr(32 + i) for i in range(96)]  # text_generator's 96 ids as printable characters
NEW = 64


class Built:
    """A build directory and the PyTorch module its graphs were exported from."""

    def __init__(self, out: Path, model: str, python: Path, static: dict[str, np.ndarray]) -> None:
        self.out, self.model, self.static = out, model, static
        torch.manual_seed(0)  # as dslc.build does before instantiating each model
        self.torch = load_generated(python).MODELS[model]().eval()

    def torch_greedy(self, prompt: np.ndarray, new: int) -> np.ndarray:
        """Greedy tokens recomputing the whole sequence with the PyTorch module."""
        ids = torch.from_numpy(prompt)
        static = [torch.from_numpy(v) for v in self.static.values()]
        with torch.no_grad():
            for _ in range(new):
                logits = self.torch(*static, ids)
                ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return ids.numpy()


@pytest.fixture(scope="module")
def text_generator(tmp_path_factory) -> Built:
    out = tmp_path_factory.mktemp("text_generator")
    result = build(SPECS / "text_generator.model", out, vocab=VOCAB)
    return Built(out, "text_generator", result.python_path, {})


@pytest.fixture(scope="module")
def transformer(tmp_path_factory) -> Built:
    out = tmp_path_factory.mktemp("transformer")
    # 20 prompt tokens and 64 new ones need more than the spec's 64 positions
    result = build(SPECS / "transformer.model", out, overrides=["max_len=128"])
    source = np.random.default_rng(1).integers(3, 16, size=(2, 9)).astype(np.int64)
    return Built(out, "transformer", result.python_path, {"source": source})


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Built:
    out = tmp_path_factory.mktemp("gpt2")
    return Built(out, "gpt2", build(SPECS / "gpt2.model", out).python_path, {})


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Built:  # rotary positions: decode_step counts them from the past length
    out = tmp_path_factory.mktemp("llama")
    return Built(out, "llama", build(SPECS / "llama.model", out).python_path, {})


def prompts(length: int, vocab: int) -> np.ndarray:
    return np.random.default_rng(length).integers(1, vocab, size=(2, length)).astype(np.int64)


# ----------------------------------------------------------------------------- tokens against PyTorch
@pytest.mark.parametrize("length", [1, 20])
@pytest.mark.parametrize("which", ["text_generator", "transformer", "gpt2", "llama"])
def test_cached_greedy_tokens_equal_pytorch(request, which, length):
    built: Built = request.getfixturevalue(which)
    prompt = prompts(length, 16)
    expected = built.torch_greedy(prompt, NEW)
    cached = Generator.load(built.out, model=built.model, providers="cpu", cache=True)
    assert cached.cached and cached.layers == {"gpt2": 4, "llama": 4}.get(which, 2)
    np.testing.assert_array_equal(cached.generate(prompt, NEW, **built.static), expected)
    # the same loop with the cache kept in onnxruntime values (the GPU path, on the CPU device)
    bound = Generator.load(built.out, model=built.model, providers="cpu", io_binding=True)
    np.testing.assert_array_equal(bound.generate(prompt, NEW, **built.static), expected)
    full = Generator.load(built.out, model=built.model, providers="cpu", cache=False)
    assert not full.cached
    np.testing.assert_array_equal(full.generate(prompt, NEW, **built.static), expected)
    assert expected.shape == (2, length + NEW)


def test_package_level_generate(text_generator):
    prompt = prompts(5, 96)
    ids = generate(text_generator.out, prompt, 10, providers="cpu")
    np.testing.assert_array_equal(ids, text_generator.torch_greedy(prompt, 10))


def test_sampling_is_reproducible_with_a_seed(text_generator):
    gen = Generator.load(text_generator.out, providers="cpu")
    prompt = prompts(4, 96)
    options = {"temperature": 1.0, "top_k": 50, "top_p": 0.95}
    first = gen.generate(prompt, 48, seed=3, **options)
    np.testing.assert_array_equal(gen.generate(prompt, 48, seed=3, **options), first)
    assert not np.array_equal(gen.generate(prompt, 48, seed=4, **options), first)
    full = Generator.load(text_generator.out, providers="cpu", cache=False)
    np.testing.assert_array_equal(full.generate(prompt, 48, seed=3, **options), first)
    assert not np.array_equal(first, gen.generate(prompt, 48))  # sampled, not greedy


def test_stop_tokens_pad_rows_and_end_the_loop(text_generator):
    gen = Generator.load(text_generator.out, providers="cpu")
    prompt = prompts(3, 96)
    free = gen.generate(prompt, 30)[:, 3:]
    stop = int(free[0, 4])  # row 0 produces it at its 5th new token
    at = [int(np.flatnonzero(row == stop)[0]) if stop in row else None for row in free]
    ids = gen.generate(prompt, 30, stop=[stop], pad_id=0)[:, 3:]
    for row, first in enumerate(at):
        if first is None:
            np.testing.assert_array_equal(ids[row], free[row, : ids.shape[1]])
        else:
            np.testing.assert_array_equal(ids[row, : first + 1], free[row, : first + 1])
            assert (ids[row, first + 1 :] == 0).all()
    if all(a is not None for a in at):
        assert ids.shape[1] == max(at) + 1  # the loop ended when the last row stopped
    padded = gen.generate(prompt, 30, stop=stop)[:, 3:]
    assert (padded[0, at[0] :] == stop).all()
    both_stop = gen.generate(prompt[:1], 30, stop=[stop, int(free[0, 1])])
    assert both_stop.shape[1] == 3 + 2  # the earlier of the two stop tokens ended it


def test_zero_new_tokens_returns_the_prompt(text_generator):
    prompt = prompts(3, 96)
    np.testing.assert_array_equal(Generator.load(text_generator.out, providers="cpu").generate(prompt, 0), prompt)


# ----------------------------------------------------------------------------- sampling rules against numpy
LOGITS = np.array(
    [
        [2.0, 1.0, 0.5, 0.5, -1.0, 3.0],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [10.0, 0.0, -5.0, 1.0, 2.0, 9.5],
    ]
)


def direct_top_p(row: np.ndarray, p: float) -> set[int]:
    """Walk the tokens from the most likely, adding them until their mass reaches p."""
    probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
    kept, mass = set(), 0.0
    for i in sorted(range(len(row)), key=lambda i: (-probs[i], i)):
        kept.add(i)
        mass += probs[i]
        if mass >= p:
            break
    return kept


@pytest.mark.parametrize("p", [0.01, 0.3, 0.6, 0.75, 0.9, 0.999, 1.0])
def test_top_p_keeps_the_smallest_nucleus(p):
    kept = filter_logits(LOGITS, top_p=p) > -np.inf
    for row, mask in zip(LOGITS, kept, strict=True):
        if np.ptp(row) == 0:  # all tied: the nucleus is the first ceil(p * n) tokens in a stable order
            assert mask.sum() == max(1, int(np.ceil(round(p * len(row), 9))))
        else:
            assert set(np.flatnonzero(mask)) == direct_top_p(row, p)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 6, 10])
def test_top_k_keeps_the_k_best_and_their_ties(k):
    kept = filter_logits(LOGITS, top_k=k) > -np.inf
    for row, mask in zip(LOGITS, kept, strict=True):
        kth = np.sort(row)[::-1][min(k, len(row)) - 1]
        assert set(np.flatnonzero(mask)) == set(np.flatnonzero(row >= kth))
    by_hand = {1: {5}, 2: {5, 0}, 3: {5, 0, 1}, 4: {5, 0, 1, 2, 3}}  # 2 and 3 tie at 0.5
    assert set(np.flatnonzero(kept[0])) == by_hand.get(k, set(range(6)))


def test_probabilities_apply_temperature_then_top_k_then_top_p():
    t, k, p = 0.5, 4, 0.8
    probs = token_probabilities(LOGITS, t, top_k=k, top_p=p)
    for row, got in zip(LOGITS, probs, strict=True):
        scaled = row / t
        kth = np.sort(scaled)[::-1][k - 1]
        scaled = np.where(scaled >= kth, scaled, -np.inf)
        nucleus = direct_top_p(scaled, p)
        scaled = np.where(np.isin(np.arange(len(row)), list(nucleus)), scaled, -np.inf)
        want = np.exp(scaled - scaled.max())
        np.testing.assert_allclose(got, want / want.sum(), rtol=1e-12, atol=0)


def test_sampling_draws_from_those_probabilities():
    rng = np.random.default_rng(0)
    logits = np.repeat(LOGITS[:1], 20000, axis=0)
    draws = choose(logits, rng, temperature=1.0, top_k=3)
    counts = np.bincount(draws, minlength=6) / len(draws)
    np.testing.assert_allclose(counts, token_probabilities(LOGITS[:1], 1.0, top_k=3)[0], atol=0.015)
    assert set(np.unique(draws)) == {0, 1, 5}
    assert (choose(LOGITS, rng, temperature=1.0, top_p=1e-6) == LOGITS.argmax(-1)).all()
    assert (choose(LOGITS, rng) == LOGITS.argmax(-1)).all()


# ----------------------------------------------------------------------------- errors
def test_context_beyond_the_position_table_is_an_input_error(text_generator):
    for cache in (True, False):
        gen = Generator.load(text_generator.out, providers="cpu", cache=cache)
        assert gen.position_limit == 128  # the graphs' dslc.max_sizes: refused before running
        with pytest.raises(InputError, match=r"at most 128 positions .* 100 tokens and 40 new ones need 140"):
            gen.generate(prompts(100, 96), 40)
        assert gen.position_limit == 128
        with pytest.raises(InputError, match="at most 128 positions"):  # known now: refused before running
            gen.generate(prompts(1, 96), 200)
        assert gen.generate(prompts(100, 96), 28).shape == (2, 128)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ([[1, 2], [3]], "equal-length"),
        ([], "non-empty"),
        ([[]], "non-empty"),
        (np.zeros((1, 2, 3), np.int64), "shape"),
        ([1.5, 2.0], "integer token ids"),
        (["a"], "integer token ids"),
        ([1, 96], "token id 96; the model's token ids are 0..95"),
        ([-1, 3], "token id -1"),
        ([2**70], "token ids"),
    ],
)
def test_bad_prompts_are_input_errors(text_generator, prompt, message):
    gen = Generator.load(text_generator.out, providers="cpu")
    with pytest.raises(InputError, match=message):
        gen.generate(prompt, 4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_new_tokens": -1}, "max_new_tokens must be at least 0"),
        ({"max_new_tokens": 2.5}, "max_new_tokens must be a whole number"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": 0}, "top_k must be at least 1"),
        ({"top_p": 0.0}, r"top_p must be a number in \(0, 1\]"),
        ({"top_p": 1.5}, "top_p"),
        ({"stop": "2"}, "stop must be a token id"),
        ({"stop": [2.5]}, "a stop token must be a whole number"),
        ({"seed": -3}, "seed"),
    ],
)
def test_bad_options_are_input_errors(text_generator, options, message):
    gen = Generator.load(text_generator.out, providers="cpu")
    with pytest.raises(InputError, match=message):
        gen.generate([1, 2], **{"max_new_tokens": 4, **options})


def test_static_inputs_are_checked(transformer):
    gen = Generator.load(transformer.out, providers="cpu")  # the one model with a decoder section
    assert gen.name == "transformer" and gen.static_inputs == ["source"]
    with pytest.raises(InputError, match="missing input.* source"):
        gen.generate([[1], [1]], 4)
    with pytest.raises(InputError, match="unknown input.* memory"):
        gen.generate([[1], [1]], 4, source=transformer.static["source"], memory=np.zeros(3))
    with pytest.raises(InputError, match="batch"):  # two source rows, three prompts
        gen.generate([[1], [1], [1]], 4, source=transformer.static["source"])
    listed = transformer.static["source"].tolist()  # lists take the declared dtype, also when bound
    bound = Generator.load(transformer.out, providers="cpu", io_binding=True)
    np.testing.assert_array_equal(
        bound.generate([[1], [1]], 4, source=listed), gen.generate([[1], [1]], 4, **transformer.static)
    )
    with pytest.raises(InputError, match="source: cannot convert"):
        gen.generate([[1], [1]], 4, source=[["a", "b"]])
    with pytest.raises(ModelError, match="KV-cache graph of 'transformer'"):
        Generator.load(transformer.out, model="transformer.decode_step")


# ----------------------------------------------------------------------------- builds without cache graphs
def copy_build(built: Built, tmp_path: Path) -> Path:
    target = tmp_path / "build"
    shutil.copytree(built.out, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def edit_manifest(folder: Path, change) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_build_without_cache_graphs_recomputes_or_refuses(text_generator, tmp_path):
    folder = copy_build(text_generator, tmp_path)

    def older_build(manifest):  # as a build from before the cache graphs
        manifest["models"][0].pop("decoder")
        manifest["models"][1:] = []

    edit_manifest(folder, older_build)
    for graph in ("prefill", "decode_step"):
        (folder / f"text_generator.{graph}.onnx").unlink()
    gen = Generator.load(folder, providers="cpu")
    assert not gen.cached and "recomputes the sequence" in gen.notes[0]
    prompt = prompts(2, 96)
    np.testing.assert_array_equal(gen.generate(prompt, 6), text_generator.torch_greedy(prompt, 6))
    with pytest.raises(ModelError, match="has no KV-cache graphs"):
        Generator.load(folder, providers="cpu", cache=True)
    alone = Generator.load(folder / "text_generator.onnx", providers="cpu")  # an .onnx file: no manifest
    np.testing.assert_array_equal(alone.generate(prompt, 6), text_generator.torch_greedy(prompt, 6))


def decoder(manifest) -> dict:
    return manifest["models"][0]["decoder"]


def entry(manifest, name: str) -> dict:
    return next(e for e in manifest["models"] if e["name"] == name)


def set_decoder(key, value):
    return lambda m: decoder(m).__setitem__(key, value)


HOSTILE = {
    "decoder is a string": (lambda m: m["models"][0].__setitem__("decoder", "prefill"), "'decoder' must be an object"),
    "decoder is a list": (lambda m: m["models"][0].__setitem__("decoder", [1]), "'decoder' must be an object"),
    "prefill is a number": (set_decoder("prefill", 3), r"\.prefill must be a non-empty string, got a number"),
    "prefill is a list": (set_decoder("prefill", ["a"]), r"\.prefill must be a non-empty string, got a list"),
    "tokens missing": (lambda m: decoder(m).pop("tokens"), r"\.tokens must be a non-empty string, got null"),
    "logits empty": (set_decoder("logits", ""), r"\.logits must be a non-empty string"),
    "layers a string": (set_decoder("layers", "2"), r"\.layers must be a whole number"),
    "layers a boolean": (set_decoder("layers", True), r"\.layers must be a whole number"),
    "layers zero": (set_decoder("layers", 0), r"\.layers must be a whole number from 1"),
    "layers huge": (set_decoder("layers", 10**12), r"\.layers must be a whole number from 1 to 4096"),
    "layers beyond the graphs": (set_decoder("layers", 3), "has no output 'present.2.key'"),
    "memory a string": (set_decoder("memory", "memory.0"), r"\.memory must be a list of names"),
    "memory invented": (set_decoder("memory", ["memory.7"]), "has no output 'memory.7'"),
    "memory twice": (set_decoder("memory", ["a", "a"]), "names a value twice"),
    "prefill unknown": (set_decoder("prefill", "nothing"), "names 'nothing', which is not a model"),
    "same graph twice": (set_decoder("prefill", "text_generator.decode_step"), "name the same model"),
    "graphs swapped": (
        lambda m: decoder(m).update(prefill="text_generator.decode_step", decode_step="text_generator.prefill"),
        "do not fit its decoder section",
    ),
    "prefill is the full model": (set_decoder("prefill", "text_generator"), "has no output 'present.0.key'"),
    "tokens renamed": (set_decoder("tokens", "ids"), "has no input 'ids'"),
    "path outside the folder": (
        lambda m: entry(m, "text_generator.prefill").__setitem__("onnx", "../elsewhere/text_generator.prefill.onnx"),
        "points outside the build directory",
    ),
    "absolute path": (
        lambda m: entry(m, "text_generator.decode_step").__setitem__("onnx", "/etc/passwd"),
        "is absolute, outside the build directory",
    ),
    "missing file": (
        lambda m: entry(m, "text_generator.decode_step").__setitem__("onnx", "gone.onnx"),
        "lists 'gone.onnx' but .* does not exist",
    ),
    "sha mismatch": (
        lambda m: entry(m, "text_generator.prefill").__setitem__("onnx_sha256", "0" * 64),
        "sha256 is .* but .* records 0{64}",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_decoder_sections_are_refused(text_generator, tmp_path, case):
    change, message = HOSTILE[case]
    folder = copy_build(text_generator, tmp_path)
    edit_manifest(folder, change)
    with pytest.raises(ModelError, match=message):
        Generator.load(folder, providers="cpu")


def test_a_modified_graph_fails_its_sha256(text_generator, tmp_path):
    folder = copy_build(text_generator, tmp_path)
    path = folder / "text_generator.decode_step.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the weights: the file still parses
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 is .* modified or corrupted"):
        Generator.load(folder, providers="cpu")


def test_a_symlink_out_of_the_folder_is_refused(text_generator, tmp_path):
    folder = copy_build(text_generator, tmp_path)
    outside = tmp_path / "outside.onnx"
    shutil.copy(folder / "text_generator.prefill.onnx", outside)
    (folder / "text_generator.prefill.onnx").unlink()
    os.symlink(outside, folder / "text_generator.prefill.onnx")
    with pytest.raises(ModelError, match="outside the build directory"):
        Generator.load(folder, providers="cpu")


# ----------------------------------------------------------------------------- command line
def test_generate_cli_prints_tokens_and_text(text_generator, tmp_path):
    out = io.StringIO()
    ids = generate_cli(text_generator.out, "1 5 7; 2 3 4", max_new_tokens=8, providers="cpu", stream=out)
    np.testing.assert_array_equal(ids, text_generator.torch_greedy(np.array([[1, 5, 7], [2, 3, 4]]), 8))
    printed = out.getvalue()
    assert "KV cache of 2 layers" in printed
    assert "tokens: 1 5 7 | " + " ".join(map(str, ids[0, 3:])) in printed
    assert "text: " + "".join(VOCAB[i] for i in (1, 5, 7)) + " | " in printed
    from_text = generate_cli(
        text_generator.out, text="!%'", max_new_tokens=8, providers="cpu", output_dir=tmp_path, stream=io.StringIO()
    )
    np.testing.assert_array_equal(from_text[0], ids[0])  # "!%'" is ids 1 5 7 in VOCAB
    np.testing.assert_array_equal(np.load(tmp_path / "tokens.npy"), from_text)


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dslc_runtime", *args], capture_output=True, text=True, check=False)


def test_module_cli_generates_with_source(transformer, tmp_path):
    np.save(tmp_path / "source.npy", transformer.static["source"])
    ok = run_module(
        "run", str(transformer.out), "--generate", "--prompt", "1; 1", "--max-new-tokens", "6",
        "--input", f"source={tmp_path / 'source.npy'}", "--providers", "cpu",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    expected = transformer.torch_greedy(np.ones((2, 1), np.int64), 6)
    assert f"tokens: 1 | {' '.join(map(str, expected[1, 1:]))}" in ok.stdout
    missing = run_module("run", str(transformer.out), "--generate", "--prompt", "1", "--providers", "cpu")
    assert missing.returncode == 1 and "missing input(s) source" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_dslc_run_generate(text_generator):
    dslc = Path(sys.executable).with_name("dslc")
    args = [str(dslc), "run", str(text_generator.out), "--generate", "--prompt", "1 5 7", "--providers", "cpu"]
    ok = subprocess.run([*args, "--max-new-tokens", "5", "--temperature", "0.7", "--top-p", "0.9", "--seed", "2"],
                        capture_output=True, text=True, check=False)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    gen = Generator.load(text_generator.out, providers="cpu")
    sampled = gen.generate([1, 5, 7], 5, temperature=0.7, top_p=0.9, seed=2)
    assert "tokens: 1 5 7 | " + " ".join(map(str, sampled[0, 3:])) in ok.stdout
    too_long = subprocess.run([*args, "--max-new-tokens", "500"], capture_output=True, text=True, check=False)
    assert too_long.returncode == 1 and "at most 128 positions" in too_long.stderr
    assert "Traceback" not in too_long.stderr
    misuse = subprocess.run(
        [str(dslc), "run", str(text_generator.out), "--prompt", "1"], capture_output=True, text=True
    )
    assert misuse.returncode == 2 and "--prompt goes with --generate" in misuse.stderr


def test_a_byte_vocabulary_reads_and_writes_utf8_and_decode_takes_a_batch():
    """text_lm trains on UTF-8 bytes: encode and decode of a byte-level vocabulary do the same."""
    from dslc_runtime.generation import Generator

    gen = Generator.__new__(Generator)
    gen.vocab = [chr(i) for i in range(256)]
    assert gen.byte_level
    ids = gen.encode("café")
    assert ids == list("café".encode())
    assert gen.decode(ids) == "café"
    assert gen.decode(np.array([ids, ids])) == ["café", "café"]


def test_a_decoders_build_directory_means_its_model_not_its_cache_graphs(text_generator):
    """Model.load(build) picks the decoder itself: its prefill and decode_step entries are not candidates."""
    from dslc_runtime import Model

    model = Model.load(text_generator.out, providers="cpu")
    assert model.name == "text_generator"
    assert Model.load(text_generator.out, model="text_generator.prefill", providers="cpu").name.endswith("prefill")
