"""Fine-tuning a pretrained causal LM as HuggingFace users do: gpt2.model trains from a checkpoint in HuggingFace's
layout (saved without the tied `lm_head.weight`), on a text file, with its embeddings frozen; the trained ONNX
KV-cache graphs then generate the PyTorch module's greedy tokens."""

from __future__ import annotations

import json

import numpy as np
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from dslc.build import load_generated, write_python
from dslc.cli import main
from dslc.verify import session

from .conftest import SPECS_DIR

TRAIN = """train {
    data = text_lm("corpus.txt", length=24, stride=6)
    loss = cross_entropy(logits, labels)
    optimizer = adamw(lr=3e-3)
    freeze = ["transformer.wte", "transformer.wpe"]
    epochs = 2
    batch_size = 16
}
"""


def test_gpt2_fine_tunes_from_a_huggingface_checkpoint_and_generates_with_its_cache(tmp_path):
    source = (SPECS_DIR / "gpt2.model").read_text()
    spec = tmp_path / "gpt2.model"
    spec.write_text(source[: source.index("train {")] + TRAIN)
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 30)
    sets = ["--set", "layers=2", "--set", "dropout=0.0"]

    write_python(spec, tmp_path / "reference.py", ["layers=2", "dropout=0.0"])
    torch.manual_seed(5)  # a "pretrained" model: other weights than the run's own initialisation
    pretrained = load_generated(tmp_path / "reference.py").MODELS["gpt2"]().state_dict()
    checkpoint = {k: v.clone() for k, v in pretrained.items() if k != "lm_head.weight"}  # as save_pretrained writes
    save_file(checkpoint, tmp_path / "model.safetensors")

    run = tmp_path / "run"
    args = ["train", str(spec), *sets, "--weights", str(tmp_path / "model.safetensors"), "-o", str(run), "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    trained = load_file(run / "gpt2.safetensors")
    assert trained["transformer.wte.weight"].equal(checkpoint["transformer.wte.weight"])  # frozen
    assert trained["lm_head.weight"].equal(trained["transformer.wte.weight"])  # tied: one tensor
    assert not trained["transformer.h.0.attn.c_attn.weight"].equal(checkpoint["transformer.h.0.attn.c_attn.weight"])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["val_loss"] < records[0]["val_loss"]

    model = load_generated(run / "gpt2.py").MODELS["gpt2"]().eval()
    model.load_state_dict(trained)
    prompt = np.frombuffer(b"the quick", dtype=np.uint8).astype(np.int64)[None]
    expected = prompt
    with torch.no_grad():
        for _ in range(12):  # greedy, recomputing the whole prefix
            logits = model(torch.from_numpy(expected))[:, -1]
            expected = np.concatenate([expected, logits.argmax(-1, keepdim=True).numpy()], axis=1)
    prefill, step = session(run / "gpt2.prefill.onnx"), session(run / "gpt2.decode_step.onnx")
    names = [o.name for o in prefill.get_outputs()]
    out = dict(zip(names, prefill.run(names, {"input_ids": prompt})))
    tokens = prompt
    for _ in range(12):
        token = out["logits"][:, -1].argmax(-1)[:, None].astype(np.int64)
        tokens = np.concatenate([tokens, token], axis=1)
        past = {k.replace("present.", "past_key_values."): v for k, v in out.items() if k.startswith("present.")}
        out = dict(zip(names, step.run(names, {"input_ids": token, **past})))
    np.testing.assert_array_equal(tokens, expected)
