"""Task helpers built on :class:`~dslc_runtime.Model` (numpy only).

* :func:`classify` - top-k labels with probabilities.
* :func:`sample` - draw noise and run a generator / decoder.
* :func:`greedy_decode` - encoder + decoder-step loop (seq2seq), see the naming convention below.
* :func:`generate` - autoregressive decoding for decoder-only language models.
* :func:`ctc_greedy_decode` - best-path CTC decoding to strings.

Decoder-step naming convention (used by :func:`greedy_decode`):

* the decoder step has an input ``token`` (int, shape ``[batch]`` or ``[batch, 1]``) that receives
  the previous token (``bos`` first);
* it returns ``logits`` (``[batch, vocab]`` or ``[batch, 1, vocab]``); if no output is named
  ``logits``, its first output is used;
* every other decoder input ``X`` is fed, at the first step, from the encoder output named ``X``
  (e.g. ``memory``, ``memory_mask``, ``state``), or zeros of its declared shape when the encoder
  has no such output;
* a decoder output named ``new_X`` is fed back into input ``X`` at the next step (recurrent
  ``state``, KV caches); inputs without a ``new_X`` keep their first value (``memory``);
* an optional int input named ``step`` (or ``position``) receives the 0-based step index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError
from .model import Model
from .signature import TensorSpec

_NOISE_NAMES = ("z", "noise", "latent", "latents", "eps")
_TOKEN_NAMES = ("token", "tokens", "prev_token", "input_token")
_STEP_NAMES = ("step", "position", "pos")


@dataclass(frozen=True)
class Prediction:
    """One class prediction."""

    label: str
    index: int
    probability: float


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax."""
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)


def _looks_like_probabilities(x: np.ndarray) -> bool:
    if x.size == 0 or np.any(x < 0) or np.any(x > 1):
        return False
    return bool(np.allclose(np.sum(x, axis=-1), 1.0, atol=1e-3))


def _feeds(model: Model, inputs: Any) -> dict[str, Any]:
    if isinstance(inputs, Mapping):
        return dict(inputs)
    if len(model.signature.inputs) != 1:
        raise InputError(
            f"{model.name} has {len(model.signature.inputs)} inputs "
            f"({', '.join(model.input_names)}); pass a dict"
        )
    return {model.input_names[0]: inputs}


def _pick_output(model: Model, preferred: Sequence[str], name: str | None) -> str:
    if name is not None:
        if name not in model.output_names:
            raise InputError(f"{model.name} has no output {name!r}; outputs: {model.output_names}")
        return name
    for candidate in preferred:
        if candidate in model.output_names:
            return candidate
    return model.output_names[0]


def classify(
    model: Model,
    inputs: Any,
    top_k: int = 1,
    *,
    output: str | None = None,
    labels: Sequence[str] | None = None,
) -> list[list[Prediction]]:
    """Classify a batch: for each row, the ``top_k`` predictions, best first.

    ``inputs`` is an array (single-input models) or a dict. The scores come from ``output`` (default:
    ``logits``, ``probs``/``probabilities``, else the first output) and are passed through softmax
    unless they already look like probabilities. Labels come from ``labels``, the model's
    ``dslc.labels`` metadata, or default to the class index.
    """
    out_name = _pick_output(model, ("logits", "probs", "probabilities", "scores"), output)
    scores = np.asarray(model.run(_feeds(model, inputs))[out_name], dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[None]
    scores = scores.reshape(scores.shape[0], -1)
    probs = scores if _looks_like_probabilities(scores) else softmax(scores)
    names = list(labels) if labels is not None else model.labels
    if names is not None and len(names) != probs.shape[1]:
        raise InputError(f"{len(names)} labels for {probs.shape[1]} classes in output {out_name!r}")
    k = max(1, min(top_k, probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        [
            Prediction(names[int(i)] if names else str(int(i)), int(i), float(row[int(i)]))
            for i in idx
        ]
        for row, idx in zip(probs, order, strict=True)
    ]


def _concrete_shape(spec: TensorSpec, sizes: Mapping[str, int], batch: int) -> tuple[int, ...]:
    shape: list[int] = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int):
            shape.append(dim)
        elif dim is not None and dim in sizes:
            shape.append(int(sizes[dim]))
        elif axis == 0:
            shape.append(batch)
        else:
            raise InputError(
                f"cannot choose a size for dim {axis} ({dim!r}) of {spec}; pass dims={{{dim!r}: N}}"
            )
    return tuple(shape)


def sample(
    generator: Model,
    n: int,
    seed: int | None = None,
    *,
    input: str | None = None,
    std: float = 1.0,
    dims: Mapping[str, int] | None = None,
    output: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Draw ``n`` standard-normal noise vectors for the generator's noise input and run it.

    Works for GAN generators and VAE decoders. The noise input is ``input``, the only input, or one
    named ``z``/``noise``/``latent``; its leading symbolic dim becomes ``n`` (other symbolic dims
    come from ``dims``). Other inputs (e.g. a class label for conditional generators) are taken
    from ``extra``. Returns ``output`` (default: the first output).
    """
    specs = generator.signature.inputs
    if input is not None:
        spec = generator.signature[input]
    elif len(specs) == 1:
        spec = specs[0]
    else:
        named = [s for s in specs if s.name in _NOISE_NAMES]
        if len(named) != 1:
            raise InputError(
                f"{generator.name} has inputs {generator.input_names}; pick the noise with input="
            )
        spec = named[0]
    sizes = dict(dims or {})
    if spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] != n:
        raise InputError(f"{spec} has a fixed batch of {spec.shape[0]}; cannot sample n={n}")
    shape = _concrete_shape(spec, sizes, n)
    rng = np.random.default_rng(seed)
    dtype = spec.numpy_dtype if spec.numpy_dtype is not None else np.dtype(np.float32)
    noise = (rng.standard_normal(shape) * std).astype(dtype)
    out_name = _pick_output(generator, (), output)
    return np.asarray(generator.run({**(extra or {}), spec.name: noise})[out_name])


def _find(names: Sequence[str], candidates: Sequence[str]) -> str | None:
    return next((c for c in candidates if c in names), None)


def _token_array(spec: TensorSpec, tokens: np.ndarray) -> np.ndarray:
    dtype = spec.numpy_dtype or np.dtype(np.int64)
    return tokens.astype(dtype).reshape((tokens.shape[0],) + (1,) * (spec.rank - 1))


def greedy_decode(
    encoder: Model,
    decoder_step: Model,
    src: Any,
    bos: int,
    eos: int,
    max_len: int,
    *,
    dims: Mapping[str, int] | None = None,
) -> list[list[int]]:
    """Greedy seq2seq decoding with an encoder graph and a decoder-step graph.

    See the module docstring for the naming convention. ``src`` is the encoder input (array, or dict
    for several inputs). Returns one token list per batch row, without ``bos`` and ``eos``.
    """
    enc_out = encoder.run(_feeds(encoder, src))
    dec_inputs = decoder_step.signature.inputs
    dec_names = [s.name for s in dec_inputs]
    token_name = _find(dec_names, _TOKEN_NAMES)
    if token_name is None:
        raise InputError(
            f"decoder step {decoder_step.name} needs an input named 'token' (previous token); "
            f"it has {dec_names}"
        )
    step_name = _find(dec_names, _STEP_NAMES)
    logits_name = _pick_output(decoder_step, ("logits",), None)
    any_out = next(iter(enc_out.values()), None)
    batch = int(np.shape(any_out)[0]) if any_out is not None and np.ndim(any_out) else 1

    state: dict[str, Any] = {}
    for spec in dec_inputs:
        if spec.name in (token_name, step_name):
            continue
        if spec.name in enc_out:
            state[spec.name] = enc_out[spec.name]
        else:
            dtype = spec.numpy_dtype or np.dtype(np.float32)
            state[spec.name] = np.zeros(_concrete_shape(spec, dims or {}, batch), dtype=dtype)
    feedback = {
        name[4:]: name
        for name in decoder_step.output_names
        if name.startswith("new_") and name[4:] in state
    }

    token_spec = decoder_step.signature[token_name]
    tokens = np.full((batch,), bos, dtype=np.int64)
    finished = np.zeros(batch, dtype=bool)
    result: list[list[int]] = [[] for _ in range(batch)]
    for step in range(max_len):
        feed = dict(state)
        feed[token_name] = _token_array(token_spec, tokens)
        if step_name is not None:
            step_spec = decoder_step.signature[step_name]
            feed[step_name] = np.full(
                _concrete_shape(step_spec, {}, batch) if step_spec.rank else (),
                step,
                dtype=step_spec.numpy_dtype or np.int64,
            )
        out = decoder_step.run(feed)
        logits = np.asarray(out[logits_name]).reshape(batch, -1)
        tokens = np.argmax(logits, axis=-1).astype(np.int64)
        tokens[finished] = eos
        for row in np.flatnonzero(~finished):
            if tokens[row] == eos:
                finished[row] = True
            else:
                result[row].append(int(tokens[row]))
        for name, out_name in feedback.items():
            state[name] = out[out_name]
        if finished.all():
            break
    return result


def generate(
    lm: Model,
    prompt_ids: Any,
    max_new_tokens: int,
    temperature: float = 0.0,
    *,
    seed: int | None = None,
    eos: int | None = None,
    top_k: int | None = None,
    input: str | None = None,
    output: str | None = None,
) -> np.ndarray:
    """Autoregressive generation with a decoder-only LM (no KV cache: full recompute per token).

    The LM takes ``tokens: int64[batch, time]`` and returns ``logits: [batch, time, vocab]``.
    ``prompt_ids`` is a list/array ``[time]`` or ``[batch, time]``. ``temperature=0`` is greedy;
    otherwise tokens are sampled from ``softmax(logits / temperature)`` (optionally top-k).
    If the model's time dim is fixed, the context is cropped to its last ``T`` tokens.
    Returns ``int64[batch, time + new]`` (rows that hit ``eos`` are padded with ``eos``).
    """
    token_name = input or (
        _find(lm.input_names, ("tokens", "input_ids", "ids")) or lm.input_names[0]
    )
    logits_name = _pick_output(lm, ("logits",), output)
    spec = lm.signature[token_name]
    ids = np.asarray(prompt_ids, dtype=np.int64)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise InputError(
            f"prompt_ids must be a non-empty [time] or [batch, time] array, got shape {ids.shape}"
        )
    window = spec.shape[1] if spec.rank == 2 and isinstance(spec.shape[1], int) else None
    dtype = spec.numpy_dtype or np.dtype(np.int64)
    rng = np.random.default_rng(seed)
    done = np.zeros(ids.shape[0], dtype=bool)
    for _ in range(max_new_tokens):
        context = ids[:, -window:] if window is not None else ids
        logits = np.asarray(
            lm.run({token_name: context.astype(dtype)})[logits_name], dtype=np.float64
        )
        last = logits[:, -1, :] if logits.ndim == 3 else logits.reshape(ids.shape[0], -1)
        if temperature <= 0:
            nxt = np.argmax(last, axis=-1)
        else:
            scaled = last / temperature
            if top_k is not None and top_k < scaled.shape[-1]:
                cutoff = np.sort(scaled, axis=-1)[:, -top_k][:, None]
                scaled = np.where(scaled < cutoff, -np.inf, scaled)
            probs = softmax(scaled)
            nxt = np.array([rng.choice(probs.shape[-1], p=p) for p in probs])
        nxt = nxt.astype(np.int64)
        if eos is not None:
            nxt[done] = eos
            done |= nxt == eos
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
        if eos is not None and done.all():
            break
    return ids


def ctc_greedy_decode(
    logits: np.ndarray,
    alphabet: str | Sequence[str],
    blank: int = 0,
    *,
    time_major: bool = False,
    lengths: Sequence[int] | np.ndarray | None = None,
) -> list[str]:
    """Best-path CTC decoding: argmax per frame, merge repeats, drop blanks.

    ``logits`` is ``[batch, time, classes]`` (``[time, batch, classes]`` with ``time_major=True``)
    or ``[time, classes]`` for one sequence. ``alphabet`` maps classes to symbols: either one entry
    per class (the entry at ``blank`` is ignored) or one entry per non-blank class, in class order.
    ``lengths`` optionally limits the number of valid frames per row.
    """
    x = np.asarray(logits)
    if x.ndim == 2:
        x = x[None] if not time_major else x[:, None]
    if x.ndim != 3:
        raise InputError(f"CTC logits must have rank 2 or 3, got shape {x.shape}")
    if time_major:
        x = np.transpose(x, (1, 0, 2))
    classes = x.shape[-1]
    symbols = list(alphabet)
    if len(symbols) == classes - 1:
        symbols.insert(blank, "")
    elif len(symbols) != classes:
        raise InputError(
            f"alphabet has {len(symbols)} symbols for {classes} classes "
            f"(expected {classes} including blank or {classes - 1} without)"
        )
    best = np.argmax(x, axis=-1)
    texts = []
    for row, path in enumerate(best):
        if lengths is not None:
            path = path[: int(lengths[row])]
        keep = np.ones(path.shape, dtype=bool)
        keep[1:] = path[1:] != path[:-1]
        keep &= path != blank
        texts.append("".join(symbols[int(i)] for i in path[keep]))
    return texts
