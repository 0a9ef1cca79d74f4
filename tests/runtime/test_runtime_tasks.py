"""Task helpers: classify, sample, greedy_decode, generate, ctc_greedy_decode."""

from __future__ import annotations

import numpy as np
import pytest
from dslc_runtime import InputError, Model
from dslc_runtime.tasks import (
    Prediction,
    classify,
    ctc_greedy_decode,
    generate,
    greedy_decode,
    sample,
    softmax,
)
from rt_models import BOS, EOS, LABELS, VOCAB


def test_classify_with_labels(models):
    m = Model.load(models.classifier, providers="cpu")
    x = np.random.default_rng(0).normal(size=(4, 1, 4, 4)).astype(np.float32)
    logits = m(image=x)["logits"]
    preds = classify(m, x, top_k=2)
    assert len(preds) == 4 and all(len(p) == 2 for p in preds)
    probs = softmax(logits.astype(np.float64))
    for row, (best, second) in zip(range(4), preds, strict=True):
        assert isinstance(best, Prediction)
        assert best.index == int(np.argmax(logits[row]))
        assert best.label == LABELS[best.index]
        assert best.probability == pytest.approx(probs[row, best.index])
        assert best.probability >= second.probability
    top1 = classify(m, {"image": x}, labels=["x", "y", "z"])
    assert [p[0].label for p in top1] == [["x", "y", "z"][p[0].index] for p in preds]
    with pytest.raises(InputError, match="2 labels for 3 classes"):
        classify(m, x, labels=["a", "b"])


def test_softmax_not_reapplied_to_probabilities():
    from dslc_runtime.tasks import _looks_like_probabilities

    assert _looks_like_probabilities(np.array([[0.2, 0.8], [1.0, 0.0]]))
    assert not _looks_like_probabilities(np.array([[2.0, -1.0]]))


def test_sample_generator(models):
    g = Model.load(models.generator, providers="cpu")
    a = sample(g, 5, seed=0)
    b = sample(g, 5, seed=0)
    c = sample(g, 5, seed=1)
    assert a.shape == (5, 6) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.all(np.abs(a) <= 1.0)  # tanh output


def test_greedy_decode_copy_task(models):
    enc = Model.load(models.encoder, providers="cpu")
    dec = Model.load(models.decoder_step, providers="cpu")
    src = np.array([[3, 4, 5, EOS, EOS], [9, 8, 7, 6, EOS]], dtype=np.int64)
    assert greedy_decode(enc, dec, src, bos=BOS, eos=EOS, max_len=10) == [
        [3, 4, 5],
        [9, 8, 7, 6],
    ]
    # max_len truncates
    assert greedy_decode(enc, dec, src, bos=BOS, eos=EOS, max_len=2) == [[3, 4], [9, 8]]
    assert "".join(VOCAB[t] for t in greedy_decode(enc, dec, src[:1], BOS, EOS, 10)[0]) == "abc"


def test_greedy_decode_zero_initial_state(tmp_path, models):
    # An encoder without a 'state' output: the decoder's state starts at zeros.
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["src"], ["memory"])],
        "enc",
        [helper.make_tensor_value_info("src", TensorProto.INT64, ["batch", "time"])],
        [helper.make_tensor_value_info("memory", TensorProto.INT64, ["batch", "time"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "enc_memory_only.onnx"
    onnx.save(model, path)
    enc = Model.load(path, providers="cpu")
    dec = Model.load(models.decoder_step, providers="cpu")
    src = np.array([[6, 5, EOS]], dtype=np.int64)
    assert greedy_decode(enc, dec, src, bos=BOS, eos=EOS, max_len=5) == [[6, 5]]


def test_generate_greedy_and_sampling(models):
    lm = Model.load(models.lm, providers="cpu")
    assert lm.vocab == VOCAB
    out = generate(lm, [7, 8], max_new_tokens=4)
    np.testing.assert_array_equal(out, [[7, 8, 9, 0, 1, 2]])
    batch = generate(lm, np.array([[1, 2], [3, 4]]), max_new_tokens=2)
    np.testing.assert_array_equal(batch, [[1, 2, 3, 4], [3, 4, 5, 6]])
    stopped = generate(lm, [[5], [0]], max_new_tokens=5, eos=7)
    np.testing.assert_array_equal(stopped, [[5, 6, 7, 7, 7, 7], [0, 1, 2, 3, 4, 5]])
    # one-hot logits are peaked enough that low-temperature sampling is deterministic
    sampled = generate(lm, [1], max_new_tokens=3, temperature=0.01, seed=0, top_k=2)
    np.testing.assert_array_equal(sampled, [[1, 2, 3, 4]])


def test_ctc_greedy_decode():
    alphabet = "-abc"  # index 0 is the blank
    path = [0, 1, 1, 0, 1, 2, 2, 0, 3, 3]  # -aa-abb-cc -> "aabc"
    logits = np.eye(4, dtype=np.float32)[path]
    assert ctc_greedy_decode(logits, alphabet) == ["aabc"]
    assert ctc_greedy_decode(logits, "abc") == ["aabc"]  # alphabet without the blank
    batch = np.stack([logits, np.eye(4, dtype=np.float32)[[3, 0, 3, 2, 0, 0, 0, 0, 0, 0]]])
    assert ctc_greedy_decode(batch, alphabet) == ["aabc", "ccb"]
    assert ctc_greedy_decode(batch.transpose(1, 0, 2), alphabet, time_major=True) == [
        "aabc",
        "ccb",
    ]
    assert ctc_greedy_decode(batch, alphabet, lengths=[3, 10]) == ["a", "ccb"]
    blank_last = np.eye(4, dtype=np.float32)[[3, 0, 0, 3, 1]]
    assert ctc_greedy_decode(blank_last, ["x", "y", "z"], blank=3) == ["xy"]
    with pytest.raises(InputError, match="alphabet has 2 symbols for 4 classes"):
        ctc_greedy_decode(logits, "ab")
