"""What the exported graphs promise their users: greedy decoding with the encoder and decoder-step
graphs reproduces the teacher-forced training model, dynamic time through strided convolutions,
causal masking, sampling from generators. All with real onnxruntime sessions and the dslc runtime.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dslc.verify import session

BOS, EOS = 1, 2


def run(built, name: str, feeds: dict) -> dict[str, np.ndarray]:
    sess = session(built.onnx(name))
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def tokens(rng, shape, vocab) -> np.ndarray:
    return rng.integers(3, vocab, size=shape).astype(np.int64)


# ---------------------------------------------------------------- encoder + decoder step


SEQ2SEQ = {
    # spec: (vocab, name of the graph that starts decoding, training inputs beyond source/target_in)
    "seq2seq": 16,
    "seq2seq_attention": 16,
    "transformer": 16,
}


@pytest.mark.parametrize("stem", list(SEQ2SEQ))
def test_inference_models_share_the_training_models_parameter_names(built, stem):
    b = built(stem)
    train = b.model(stem).state_dict()
    for name in ("encoder", "decoder_step"):
        sd = b.model(name).state_dict()
        assert sd and all(k in train and train[k].shape == v.shape for k, v in sd.items())
    assert set(b.model("encoder").state_dict()) | set(b.model("decoder_step").state_dict()) == set(train)


@pytest.mark.parametrize("stem", list(SEQ2SEQ))
def test_decoder_steps_reproduce_teacher_forcing(built, stem):
    """Feeding the target one token at a time through encoder.onnx + decoder_step.onnx gives the
    training model's teacher-forced logits at every position."""
    b, vocab = built(stem), SEQ2SEQ[stem]
    rng = np.random.default_rng(0)
    source, target_in = tokens(rng, (3, 7), vocab), tokens(rng, (3, 5), vocab)
    target_in[:, 0] = BOS
    with torch.no_grad():
        expected = b.model(stem)(torch.from_numpy(source), torch.from_numpy(target_in)).numpy()
    enc = run(b, "encoder", {"source": source})
    dec = session(b.onnx("decoder_step"))
    carried = {i.name: enc[i.name] for i in dec.get_inputs() if i.name != "token"}
    outputs = [o.name for o in dec.get_outputs()]
    for t in range(target_in.shape[1]):
        out = dict(zip(outputs, dec.run(None, {"token": target_in[:, t], **carried})))
        np.testing.assert_allclose(out["logits"], expected[:, t], rtol=1e-4, atol=1e-5)
        carried.update({k: out[f"new_{k}"] for k in carried if f"new_{k}" in out})


@pytest.mark.parametrize("stem", list(SEQ2SEQ))
def test_runtime_greedy_decode_matches_pytorch(built, stem):
    from dslc_runtime import Model
    from dslc_runtime.tasks import greedy_decode

    b, vocab = built(stem), SEQ2SEQ[stem]
    source = tokens(np.random.default_rng(1), (2, 6), vocab)
    decoded = greedy_decode(
        Model.load(b.out, model="encoder"), Model.load(b.out, model="decoder_step"), source, bos=BOS, eos=EOS, max_len=6
    )
    # the same greedy search with the PyTorch training model, recomputing the prefix each step
    model, prefix = b.model(stem), np.full((2, 1), BOS, dtype=np.int64)
    with torch.no_grad():
        for _ in range(6):
            logits = model(torch.from_numpy(source), torch.from_numpy(prefix)).numpy()
            prefix = np.concatenate([prefix, logits[:, -1].argmax(-1)[:, None]], axis=1)
    for row, got in enumerate(decoded):
        want = []
        for token in prefix[row, 1:]:
            if token == EOS:
                break
            want.append(int(token))
        assert got == want


def test_rvae_generation_graphs_match_the_training_model(built):
    """encoder -> mu, initial_state(mu), decoder steps == rvae with eps = 0, teacher forced."""
    b = built("rvae")
    rng = np.random.default_rng(2)
    seq = tokens(rng, (3, 6), 32)
    inputs = np.concatenate([np.full((3, 1), BOS, dtype=np.int64), seq[:, :-1]], axis=1)
    eps = np.zeros((3, 16), dtype=np.float32)
    with torch.no_grad():
        logits, mu, logvar = b.model("rvae")(*(torch.from_numpy(x) for x in (seq, inputs, eps)))
    enc = run(b, "encoder", {"tokens": seq})
    np.testing.assert_allclose(enc["mu"], mu.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(enc["logvar"], logvar.numpy(), rtol=1e-4, atol=1e-5)
    state = run(b, "initial_state", {"z": enc["mu"]})["state"]
    for t in range(inputs.shape[1]):
        out = run(b, "decoder_step", {"token": inputs[:, t], "state": state})
        np.testing.assert_allclose(out["logits"], logits[:, t].numpy(), rtol=1e-4, atol=1e-5)
        state = out["new_state"]
    from dslc_runtime import Model
    from dslc_runtime.tasks import greedy_decode

    z = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)
    samples = greedy_decode(
        Model.load(b.out, model="initial_state"),
        Model.load(b.out, model="decoder_step"),
        z,
        bos=BOS,
        eos=EOS,
        max_len=5,
    )
    assert len(samples) == 4 and all(len(s) <= 5 for s in samples)


def test_vae_encoder_and_decoder_graphs_compose_to_the_training_model(built):
    b = built("vae")
    image = np.random.default_rng(4).random((5, 1, 28, 28), dtype=np.float32)
    eps = np.zeros((5, 20), dtype=np.float32)
    with torch.no_grad():
        reconstruction, mu, _ = b.model("vae")(torch.from_numpy(image), torch.from_numpy(eps))
    enc = run(b, "encoder", {"image": image})
    np.testing.assert_allclose(enc["latent_mean"], mu.numpy(), rtol=1e-4, atol=1e-5)
    dec = run(b, "decoder", {"z": enc["latent_mean"]})
    np.testing.assert_allclose(dec["image"], reconstruction.numpy(), rtol=1e-4, atol=1e-5)
    # eps moves the sample: z = mu + exp(logvar / 2) * eps
    moved = run(b, "vae", {"image": image, "eps": np.ones((5, 20), dtype=np.float32)})
    assert not np.allclose(moved["reconstruction"], reconstruction.numpy())


def test_gan_generator_samples_images_the_discriminator_scores(built):
    from dslc_runtime import Model
    from dslc_runtime.tasks import sample

    b = built("gan")
    images = sample(Model.load(b.out, model="generator"), n=4, seed=0)
    images = images if isinstance(images, np.ndarray) else next(iter(images.values()))
    assert images.shape == (4, 1, 28, 28) and images.min() >= 0.0 and images.max() <= 1.0
    scores = run(b, "discriminator", {"image": images})
    assert scores["probability"].shape == (4, 1)
    np.testing.assert_allclose(scores["probability"], 1 / (1 + np.exp(-scores["logit"])), rtol=1e-5)


# ---------------------------------------------------------------- dynamic axes and masks


@pytest.mark.parametrize("frames", [13, 64, 101])
def test_deepspeech_time_stays_dynamic_through_strided_convolutions(built, frames):
    b = built("deepspeech")
    spectrogram = np.random.default_rng(frames).standard_normal((2, 1, 80, frames)).astype(np.float32)
    (logits,) = session(b.onnx("deepspeech")).run(["logits"], {"spectrogram": spectrogram})
    assert logits.shape == (2, (frames - 1) // 2 + 1, 29)
    with torch.no_grad():
        expected = b.model("deepspeech")(torch.from_numpy(spectrogram)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_text_generator_is_causal_and_generates(built):
    from dslc_runtime import Model
    from dslc_runtime.tasks import generate

    b = built("text_generator")
    rng = np.random.default_rng(5)
    a = tokens(rng, (2, 12), 96)
    c = a.copy()
    c[:, 8:] = tokens(rng, (2, 4), 96)  # change only the future of position 7
    sess = session(b.onnx("text_generator"))
    (la,) = sess.run(["logits"], {"tokens": a})
    (lc,) = sess.run(["logits"], {"tokens": c})
    assert la.shape == (2, 12, 96)
    np.testing.assert_allclose(la[:, :8], lc[:, :8], rtol=1e-5, atol=1e-6)
    assert not np.allclose(la[:, 8:], lc[:, 8:])
    out = generate(Model.load(b.out, model="text_generator"), a[:, :4], max_new_tokens=5)
    assert out.shape == (2, 9) and (out[:, :4] == a[:, :4]).all()


def test_transformer_encoder_starts_an_empty_decoder_history(built):
    b = built("transformer")
    enc = run(b, "encoder", {"source": tokens(np.random.default_rng(6), (3, 5), 16)})
    assert enc["history"].shape == (3, 0) and enc["history"].dtype == np.int64
    assert enc["memory"].shape == (3, 5, 64)


def test_bert_padding_is_ignored(built):
    """Changing padded tokens does not change the logits of a masked row."""
    b = built("bert_classifier")
    rng = np.random.default_rng(7)
    ids = rng.integers(1000, 2000, size=(2, 10)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[:, 6:] = 0
    types = np.zeros_like(ids)
    other = ids.copy()
    other[:, 6:] = rng.integers(2000, 3000, size=(2, 4))
    sess = session(b.onnx("bert_classifier"))
    (x,) = sess.run(["logits"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    (y,) = sess.run(["logits"], {"input_ids": other, "attention_mask": mask, "token_type_ids": types})
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_policy_outputs_a_distribution_over_two_actions(built):
    b = built("policy")
    out = run(b, "policy", {"observation": np.random.default_rng(8).standard_normal((7, 4)).astype(np.float32)})
    assert out["logits"].shape == (7, 2)
    np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, rtol=1e-6)
