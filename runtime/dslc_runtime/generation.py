"""Text generation with the KV-cache graphs a dslc build writes for a decoder (numpy + onnxruntime only).

A build of a decoder writes, besides ``<model>.onnx``:

* ``<model>.prefill.onnx``: the model's inputs in; its ``logits`` for the prompt, ``present.N.key`` /
  ``present.N.value`` ``[batch, kv_heads, total, head_size]`` per cached layer and the ``memory.N`` values
  (computed once from inputs that do not change while generating, e.g. an encoder's keys and values) out;
* ``<model>.decode_step.onnx``: the new tokens ``[batch, new]``, ``past_key_values.N.key`` / ``.value`` and
  ``memory.N`` in; the new positions' ``logits`` and the ``present`` (past plus the new positions) out.

The manifest's entry for the model says so in its ``decoder`` section. :class:`Generator` runs prefill once and
then decode_step once per token; on a GPU the cache stays on the device through IOBinding. A build without
those graphs falls back to recomputing the whole sequence per token with ``<model>.onnx``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from . import providers as _providers
from ._manifest import MANIFEST, ManifestEntry, _entries, _invalid, read_manifest
from .errors import DslcRuntimeError, InputError, ModelError, RunError
from .model import _ORT_ERRORS, _ORT_OUT_OF_MEMORY, Model
from .signature import TensorSpec, display, quoted

PAST = "past_key_values.{}.{}"
PRESENT = "present.{}.{}"
MAX_LAYERS = 4096
"""More cached layers than any real model has: a larger count comes from a hostile manifest."""

_INT_KINDS = "iu"


# --------------------------------------------------------------------------- the manifest's decoder section
@dataclass(frozen=True)
class DecoderSection:
    """A validated ``decoder`` section of a manifest entry."""

    prefill: str
    decode_step: str
    tokens: str
    logits: str
    layers: int
    memory: tuple[str, ...]


def _decoder_section(raw: Any, where: str, path: Path, names: set[str]) -> DecoderSection:
    if not isinstance(raw, dict):
        raise _invalid(path, where, "an object", raw)
    text = {}
    for key in ("prefill", "decode_step", "tokens", "logits"):
        value = raw.get(key)
        if not isinstance(value, str) or not value:
            raise _invalid(path, f"{where}.{key}", "a non-empty string", value)
        text[key] = value
    for key in ("prefill", "decode_step"):
        if text[key] not in names:
            raise ModelError(
                f"invalid manifest {path}: {where}.{key} names {quoted(text[key])}, which is not a model "
                "of the manifest"
            )
    if text["prefill"] == text["decode_step"]:
        raise ModelError(
            f"invalid manifest {path}: {where}.prefill and .decode_step name the same model"
        )
    layers = raw.get("layers")
    if type(layers) is not int or not 1 <= layers <= MAX_LAYERS:
        raise ModelError(
            f"invalid manifest {path}: {where}.layers must be a whole number from 1 to {MAX_LAYERS}, "
            f"got {display(repr(layers), 40)}"
        )
    memory = raw.get("memory", [])
    if not isinstance(memory, list) or not all(isinstance(m, str) and m for m in memory):
        raise ModelError(
            f"invalid manifest {path}: {where}.memory must be a list of names (strings)"
        )
    if len(set(memory)) != len(memory):
        raise ModelError(f"invalid manifest {path}: {where}.memory names a value twice")
    return DecoderSection(
        text["prefill"], text["decode_step"], text["tokens"], text["logits"], layers, tuple(memory)
    )


def _manifest_path(path: Path) -> Path | None:
    """The manifest a path leads to (a build directory or the manifest itself); None for an .onnx file."""
    if os.path.isdir(path):
        candidate = path / MANIFEST
        return candidate if os.path.lexists(candidate) else None
    if path.name == MANIFEST or path.suffix == ".json":
        return path
    return None


def _pick_decoder(
    entries: list[ManifestEntry], sections: dict[str, Any], model: str | None, path: Path
) -> str:
    """The model to generate with: ``model``, else the one entry with a decoder section, else the only entry."""
    graphs = {
        v
        for s in sections.values()
        if isinstance(s, dict)
        for k in ("prefill", "decode_step")
        if isinstance(v := s.get(k), str)
    }
    if model is not None:
        if model in graphs and model not in sections:
            owner = next(
                n
                for n, s in sections.items()
                if isinstance(s, dict) and model in (s.get("prefill"), s.get("decode_step"))
            )
            raise ModelError(
                f"{quoted(model)} is a KV-cache graph of {quoted(owner)}; pass model={owner!r}"
            )
        return model
    if len(sections) == 1:
        return next(iter(sections))
    candidates = [e.name for e in entries if e.name not in graphs]
    if not sections and len(candidates) == 1:
        return candidates[0]
    listed = ", ".join(display(n) for n in (sections or candidates))
    raise ModelError(
        f"{path} has several models that can generate ({listed}); choose one with model=NAME"
    )


# --------------------------------------------------------------------------- choosing the next token
def filter_logits(
    logits: np.ndarray, top_k: int | None = None, top_p: float | None = None
) -> np.ndarray:
    """``logits`` [batch, vocab] with the tokens outside top-k and then outside the nucleus set to -inf.

    top-k keeps the ``k`` highest scores (and any tied with the k-th). top-p keeps, in order of decreasing
    probability, the fewest tokens whose probabilities sum to at least ``top_p`` (always at least one): a token
    stays when the probability mass above it is below ``top_p``. The same rules as HuggingFace's warpers.
    """
    scores = np.asarray(logits, dtype=np.float64)
    if top_k is not None and top_k < scores.shape[-1]:
        kth = np.partition(scores, -top_k, axis=-1)[:, -top_k][:, None]
        scores = np.where(scores < kth, -np.inf, scores)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-scores, axis=-1, kind="stable")
        probs = np.take_along_axis(_softmax(scores), order, axis=-1)
        above = np.cumsum(probs, axis=-1) - probs
        keep_sorted = above < top_p
        keep_sorted[:, 0] = True
        keep = np.empty_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        scores = np.where(keep, scores, -np.inf)
    return scores


def token_probabilities(
    logits: np.ndarray, temperature: float, top_k: int | None = None, top_p: float | None = None
) -> np.ndarray:
    """The sampling distribution [batch, vocab]: ``softmax(logits / temperature)`` after top-k and top-p."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    return _softmax(filter_logits(scaled, top_k, top_p))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def choose(
    logits: np.ndarray,
    rng: np.random.Generator,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> np.ndarray:
    """The next token of each row: argmax when ``temperature`` is 0, else one draw per row (one uniform each)."""
    if temperature <= 0:
        return np.argmax(logits, axis=-1).astype(np.int64)
    probs = token_probabilities(logits, temperature, top_k, top_p)
    cumulative = np.cumsum(probs, axis=-1)
    draws = rng.random(probs.shape[0]) * cumulative[:, -1]
    picked = (cumulative <= draws[:, None]).sum(axis=-1)
    # float round-off can land past the last kept token: take the last one with probability > 0
    last = probs.shape[-1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)
    return np.minimum(picked, last).astype(np.int64)


# --------------------------------------------------------------------------- options
@dataclass(frozen=True)
class _Options:
    max_new_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int | None
    stop: tuple[int, ...]
    pad_id: int | None


def _whole(value: Any, what: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InputError(f"{what} must be a whole number, got {display(repr(value), 40)}")
    if minimum is not None and value < minimum:
        raise InputError(f"{what} must be at least {minimum}, got {value}")
    return int(value)


def _options(
    max_new_tokens: Any,
    temperature: Any,
    top_k: Any,
    top_p: Any,
    seed: Any,
    stop: Any,
    pad_id: Any,
) -> _Options:
    if isinstance(temperature, bool) or not isinstance(temperature, int | float | np.floating):
        raise InputError(f"temperature must be a number >= 0, got {display(repr(temperature), 40)}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise InputError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_p is not None and (
        isinstance(top_p, bool)
        or not isinstance(top_p, int | float | np.floating)
        or not 0 < top_p <= 1
    ):
        raise InputError(f"top_p must be a number in (0, 1], got {display(repr(top_p), 40)}")
    stops: Sequence[Any] = (
        () if stop is None else ([stop] if isinstance(stop, int | np.integer) else stop)
    )
    if isinstance(stops, str | bytes) or not isinstance(stops, Sequence | np.ndarray):
        raise InputError(
            f"stop must be a token id or a list of them, got {display(repr(stop), 40)}"
        )
    return _Options(
        max_new_tokens=_whole(max_new_tokens, "max_new_tokens", 0),
        temperature=float(temperature),
        top_k=None if top_k is None else _whole(top_k, "top_k", 1),
        top_p=None if top_p is None else float(top_p),
        seed=None if seed is None else _whole(seed, "seed", 0),
        stop=tuple(_whole(s, "a stop token") for s in stops),
        pad_id=None if pad_id is None else _whole(pad_id, "pad_id"),
    )


def prompt_array(prompt: Any, vocab_size: int | None = None) -> np.ndarray:
    """``prompt`` (ids ``[time]`` or equal-length rows ``[batch, time]``) as int64[batch, time], checked."""
    try:
        ids = np.asarray(prompt)
    except (ValueError, TypeError, OverflowError):
        ids = None
    if ids is None or ids.dtype.kind == "O":
        raise InputError(
            "the prompt must be token ids: a list of ints, or equal-length lists of ints (one per row)"
        )
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise InputError(
            f"the prompt must be a non-empty [time] or [batch, time] array of token ids, got shape {ids.shape}"
        )
    if ids.dtype.kind not in _INT_KINDS:
        raise InputError(f"the prompt must be integer token ids, got {ids.dtype} values")
    if ids.dtype.kind == "u" and ids.size and int(ids.max()) > np.iinfo(np.int64).max:
        raise InputError("the prompt has token ids beyond int64")
    ids = ids.astype(np.int64)
    if ids.min() < 0 or (vocab_size is not None and ids.max() >= vocab_size):
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        bound = f"0..{vocab_size - 1}" if vocab_size is not None else ">= 0"
        raise InputError(f"the prompt has token id {bad}; the model's token ids are {bound}")
    return ids


# --------------------------------------------------------------------------- the generator
def _device(model: Model) -> str:
    return "cuda" if model.provider in (_providers.CUDA, _providers.TENSORRT) else "cpu"


class Generator:
    """Autoregressive generation for a dslc build, with the KV cache when the build has its graphs.

    ::

        gen = Generator.load("build/tg")                       # prefill + decode_step when the build has them
        ids = gen.generate([1, 5, 7], max_new_tokens=32)      # greedy: int64[1, 3 + 32]
        ids = gen.generate([[1, 5], [1, 6]], 32, temperature=0.8, top_p=0.9, seed=0, stop=[2])
        gen = Generator.load("build/transformer", model="transformer")
        ids = gen.generate([[1]], 8, source=np.array([[3, 4, 5]]))  # inputs fixed while generating
    """

    def __init__(
        self,
        *,
        name: str,
        tokens: str,
        logits: str,
        prefill: Model | None = None,
        decode_step: Model | None = None,
        full: Model | None = None,
        layers: int = 0,
        memory: Sequence[str] = (),
        notes: Sequence[str] = (),
        io_binding: bool | None = None,
    ) -> None:
        self.name = name
        self.tokens = tokens
        self.logits = logits
        self.prefill = prefill
        self.decode_step = decode_step
        self.full = full
        self.layers = layers
        self.memory = tuple(memory)
        self.notes = list(notes)
        first = prefill or full
        if first is None:
            raise ValueError(
                "a Generator needs the prefill and decode_step models or the full model"
            )
        self._first = first
        self.device = _device(first)
        self.io_binding = self.device != "cpu" if io_binding is None else bool(io_binding)
        self.position_limit: int | None = _declared_context(first, tokens)
        """The longest context that runs: the model's declared largest size, or once a run found it (generation
        checks against it from then on)."""
        self.vocab = first.vocab
        self.vocab_size = _vocab_size(first.signature.outputs, logits)
        self.static_inputs = [n for n in first.input_names if n != tokens]
        """Inputs fed once (e.g. ``source``): what ``generate`` takes as keyword arguments."""

    @property
    def byte_level(self) -> bool:
        """Whether the vocabulary is the 256 byte values (``text_lm``'s): text is its UTF-8 bytes."""
        return (
            self.vocab is not None
            and len(self.vocab) == 256
            and all(tok == chr(i) for i, tok in enumerate(self.vocab))
        )

    def encode(self, text: str) -> list[int]:
        """``text`` as token ids of the model's vocabulary (longest match first; UTF-8 bytes for a byte-level
        vocabulary)."""
        if not self.vocab:
            raise InputError(
                f"{display(self.name)} has no vocabulary (dslc.vocab): give the prompt as token ids"
            )
        if self.byte_level:
            return list(text.encode("utf-8"))
        index = {tok: i for i, tok in reversed(list(enumerate(self.vocab))) if tok}
        longest = max(map(len, index), default=0)
        ids, at = [], 0
        while at < len(text):
            size = next(
                (
                    n
                    for n in range(min(longest, len(text) - at), 0, -1)
                    if text[at : at + n] in index
                ),
                0,
            )
            if not size:
                raise InputError(
                    f"{quoted(text[at])} (at {at} in the prompt) is not in the model's vocabulary"
                )
            ids.append(index[text[at : at + size]])
            at += size
        return ids

    def decode(self, ids: Any) -> str | list[str]:
        """Token ids as text (the vocabulary's tokens joined; bytes read as UTF-8 for a byte-level vocabulary);
        ids outside it are written ``<id>``. A batch ``[batch, time]``, as generate() returns it, gives a list."""
        rows = np.asarray(ids)
        if rows.size == 0:
            return [] if rows.ndim == 2 else ""
        if rows.ndim == 2:
            return [self.decode(row) for row in rows]
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
            raise InputError(
                f"decode takes token ids [time] or [batch, time], got an array of shape {rows.shape}"
            )
        vocab = self.vocab or []
        if self.byte_level and ((rows >= 0) & (rows < 256)).all():
            return bytes(rows.astype(np.uint8).tolist()).decode("utf-8", errors="replace")
        return "".join(vocab[i] if 0 <= i < len(vocab) else f"<{i}>" for i in map(int, rows))

    @property
    def cached(self) -> bool:
        """Whether generation runs the KV-cache graphs (else the whole sequence is recomputed per token)."""
        return self.decode_step is not None

    @property
    def provider(self) -> str:
        return self._first.provider

    def __repr__(self) -> str:
        how = f"KV cache of {self.layers} layers" if self.cached else "full recompute"
        return f"<dslc_runtime.Generator {self.name!r} ({how}) on {self.provider}>"

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        model: str | None = None,
        providers: _providers.ProviderRequest = "auto",
        cache: bool | None = None,
        io_binding: bool | None = None,
        **model_options: Any,
    ) -> Generator:
        """Load a build directory (or its manifest, or a decoder's ``.onnx`` for full recompute).

        Args:
            model: the model to generate with when the manifest has several (default: the one with a
                ``decoder`` section).
            cache: ``None`` uses the KV-cache graphs when the build has them, else recomputes the sequence per
                token (``notes`` says so); ``True`` refuses a build without them; ``False`` always recomputes.
            io_binding: keep the cache in onnxruntime values between steps (default: on a GPU, where it stays
                on the device; on the CPU plain runs are as fast).
            model_options: passed to :meth:`Model.load` (``device_id``, ``intra_op_num_threads``, ...).
        """
        manifest_path = _manifest_path(Path(path))
        section, name = None, None
        if manifest_path is not None:
            manifest = read_manifest(manifest_path)
            entries = _entries(manifest, manifest_path)
            raw = {
                e.name: r.get("decoder") for e, r in zip(entries, manifest["models"], strict=True)
            }
            sections = {n: s for n, s in raw.items() if s is not None}
            name = _pick_decoder(entries, sections, model, manifest_path)
            if name not in raw:
                available = ", ".join(display(e.name) for e in entries)
                raise ModelError(
                    f"no model {quoted(name)} in {manifest_path}; available: {available}"
                )
            if name in sections:
                names = {e.name for e in entries}
                section = _decoder_section(
                    sections[name], f"model {quoted(name)}'s 'decoder'", manifest_path, names
                )
        options = {"providers": providers, **model_options}
        if section is not None and cache is not False:
            return cls._cached(manifest_path, name, section, options, io_binding)  # type: ignore[arg-type]
        what = f"{quoted(name)} in {manifest_path}" if name is not None else str(path)
        if cache:
            raise ModelError(
                f"{what} has no KV-cache graphs (no 'decoder' section in the manifest): dslc writes them for a "
                "decoder whose attention is causal; without them, generate with full recompute (--no-cache, "
                "or cache=False in Python)"
            )
        full = Model.load(manifest_path or path, model=name, **options)
        tokens = _token_input(full)
        logits = _logits_output(full, section.logits if section else None)
        notes = (
            []
            if section is not None
            else [f"{what} has no KV-cache graphs: every token recomputes the sequence"]
        )
        return cls(
            name=full.name,
            tokens=tokens,
            logits=logits,
            full=full,
            notes=notes,
            io_binding=io_binding,
        )

    @classmethod
    def _cached(
        cls,
        manifest_path: Path,
        name: str,
        section: DecoderSection,
        options: dict[str, Any],
        io_binding: bool | None,
    ) -> Generator:
        prefill = Model.load(manifest_path, model=section.prefill, **options)
        decode_step = Model.load(manifest_path, model=section.decode_step, **options)
        _check_graphs(prefill, decode_step, section, manifest_path)
        return cls(
            name=name,
            tokens=section.tokens,
            logits=section.logits,
            prefill=prefill,
            decode_step=decode_step,
            layers=section.layers,
            memory=section.memory,
            notes=[*prefill.notes],
            io_binding=io_binding,
        )

    # ------------------------------------------------------------------ generating
    def generate(
        self,
        prompt: Any,
        max_new_tokens: int = 20,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: int | Sequence[int] | None = None,
        pad_id: int | None = None,
        inputs: Mapping[str, Any] | None = None,
        **static: Any,
    ) -> np.ndarray:
        """Continue ``prompt`` by up to ``max_new_tokens`` tokens; returns int64[batch, time + generated].

        ``temperature=0`` is greedy; otherwise one token per row is drawn from ``softmax(logits / temperature)``
        restricted to the ``top_k`` best and then to the nucleus of mass ``top_p``, with
        ``numpy.random.default_rng(seed)``. A row that produces a token of ``stop`` stops: later positions hold
        ``pad_id`` (default: the stop token it produced); generation ends when every row stopped. Inputs that
        do not change while generating (an encoder's ``source``) come as keyword arguments or ``inputs=``.
        """
        opts = _options(max_new_tokens, temperature, top_k, top_p, seed, stop, pad_id)
        ids = prompt_array(prompt, self.vocab_size)
        fixed = self._static({**(inputs or {}), **static})
        if (
            self.position_limit is not None
            and ids.shape[1] + opts.max_new_tokens > self.position_limit
        ):
            raise self._too_long(ids.shape[1], opts.max_new_tokens)
        out = np.empty((ids.shape[0], ids.shape[1] + opts.max_new_tokens), dtype=np.int64)
        out[:, : ids.shape[1]] = ids
        if opts.max_new_tokens == 0:
            return out
        step = _CachedSteps(self, fixed) if self.cached else _FullSteps(self, fixed)
        rng = np.random.default_rng(opts.seed)
        stops = np.array(opts.stop, dtype=np.int64)
        done = np.zeros(ids.shape[0], dtype=bool)
        fill = np.zeros(ids.shape[0], dtype=np.int64)
        length = ids.shape[1]
        try:
            logits = step.first(ids)
            while True:
                nxt = choose(logits, rng, opts.temperature, opts.top_k, opts.top_p)
                if stops.size:
                    nxt = np.where(done, fill, nxt)
                    new_stops = ~done & np.isin(nxt, stops)
                    fill[new_stops] = nxt[new_stops] if opts.pad_id is None else opts.pad_id
                    done |= new_stops
                out[:, length] = nxt
                length += 1
                if done.all() or length == out.shape[1]:
                    return out[:, :length]
                logits = step.next(out[:, :length])
        except RunError as exc:
            if _ORT_OUT_OF_MEMORY.search(str(exc)):
                raise
            limit = self._find_position_limit(fixed, length)
            if limit is None:
                raise
            self.position_limit = limit
            raise self._too_long(ids.shape[1], opts.max_new_tokens) from None

    def _static(self, given: Mapping[str, Any]) -> dict[str, Any]:
        unknown = [k for k in given if k not in self.static_inputs]
        missing = [n for n in self.static_inputs if n not in given]
        if unknown or missing:
            problems = []
            if unknown:
                problems.append(f"unknown input(s) {', '.join(display(str(k)) for k in unknown)}")
            if missing:
                problems.append(f"missing input(s) {', '.join(map(display, missing))}")
            expects = ", ".join(map(display, self.static_inputs)) or "no inputs besides the prompt"
            raise InputError(f"{display(self.name)}: {'; '.join(problems)} (it takes {expects})")
        specs = {spec.name: spec for spec in self._first.signature.inputs}
        # lists become arrays of the declared dtype here: the IOBinding path binds them as they are
        arrays = {}
        for k, v in given.items():
            try:
                arrays[k] = (
                    v
                    if isinstance(v, np.ndarray | ort.OrtValue)
                    else np.asarray(v, specs[k].numpy_dtype)
                )
            except (TypeError, ValueError, OverflowError) as exc:
                raise InputError(
                    f"{display(k)}: cannot convert {type(v).__name__} to {specs[k].dtype}: {exc}"
                ) from None
        return arrays

    def _too_long(self, prompt: int, new: int) -> InputError:
        return InputError(
            f"{display(self.name)} handles at most {self.position_limit} positions (its position table), but a "
            f"prompt of {prompt} tokens and {new} new ones need {prompt + new}: ask for fewer new tokens or a "
            "shorter prompt, or rebuild the model with a larger context"
        )

    def _find_position_limit(self, fixed: Mapping[str, Any], failed_at: int) -> int | None:
        """The longest context a one-row run takes (a run of ``failed_at`` tokens failed); None if even one fails."""
        model = self._first
        row = {k: (v[:1] if np.ndim(v) else v) for k, v in fixed.items()}

        def runs(length: int) -> bool:
            try:
                model.run({**row, self.tokens: np.zeros((1, length), np.int64)})
            except DslcRuntimeError:
                return False
            return True

        low, high = 0, failed_at  # runs(low) (or low == 0), not runs(high)
        if not runs(1):
            return None
        low = 1
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if runs(mid) else (low, mid)
        return low


def _declared_context(model: Model, tokens: str) -> int | None:
    """The largest length of the tokens' time axis the model declares (``dslc.max_sizes``), if it does."""
    shape = model.signature[tokens].shape if tokens in model.signature.input_names else ()
    time = shape[1] if len(shape) == 2 else None
    return model.signature.max_sizes.get(time) if isinstance(time, str) else None


def _vocab_size(outputs: Sequence[TensorSpec], logits: str) -> int | None:
    spec = next((s for s in outputs if s.name == logits), None)
    size = spec.shape[-1] if spec is not None and spec.rank else None
    return size if isinstance(size, int) and size > 0 else None


def _token_input(full: Model) -> str:
    names = [s.name for s in full.signature.inputs if s.rank == 2 and (s.numpy_dtype is not None)]
    ints = [n for n in names if full.signature[n].numpy_dtype.kind in _INT_KINDS]  # type: ignore[union-attr]
    for candidate in ("tokens", "input_ids", "ids", "target_in"):
        if candidate in ints:
            return candidate
    if len(ints) == 1:
        return ints[0]
    raise ModelError(
        f"{display(full.name)} has no single token input (an integer [batch, time] input named tokens or "
        f"input_ids); its inputs are {', '.join(map(display, full.input_names))}"
    )


def _logits_output(model: Model, preferred: str | None) -> str:
    names = model.output_names
    for candidate in (preferred, "logits"):
        if candidate in names:
            return candidate  # type: ignore[return-value]
    floats = [
        s.name for s in model.signature.outputs if s.rank == 3 and s.dtype.startswith("float")
    ]
    if len(floats) == 1:
        return floats[0]
    raise ModelError(f"{display(model.name)} has no 'logits' output [batch, time, vocab]")


def _check_graphs(prefill: Model, decode: Model, section: DecoderSection, path: Path) -> None:
    """Refuse graphs whose ports are not the KV-cache contract the manifest's decoder section describes."""
    past = [PAST.format(i, k) for i in range(section.layers) for k in ("key", "value")]
    present = [PRESENT.format(i, k) for i in range(section.layers) for k in ("key", "value")]
    problems: list[str] = []

    def need(model: Model, kind: str, names: Sequence[str], rank: int, kinds: str) -> None:
        specs = {
            s.name: s
            for s in (model.signature.inputs if kind == "input" else model.signature.outputs)
        }
        for n in names:
            spec = specs.get(n)
            if spec is None:
                problems.append(f"{display(model.name)} has no {kind} {quoted(n)}")
            elif (
                spec.rank != rank or spec.numpy_dtype is None or spec.numpy_dtype.kind not in kinds
            ):
                problems.append(
                    f"{display(model.name)}'s {kind} {quoted(n)} is {spec}, not the cache contract's"
                )

    need(prefill, "input", [section.tokens], 2, _INT_KINDS)
    need(decode, "input", [section.tokens], 2, _INT_KINDS)
    need(prefill, "output", [section.logits], 3, "f")
    need(decode, "output", [section.logits], 3, "f")
    need(prefill, "output", present, 4, "f")
    need(decode, "output", present, 4, "f")
    need(decode, "input", past, 4, "f")
    prefill_outputs = set(prefill.output_names)
    problems += [
        f"{display(prefill.name)} has no output {quoted(m)}"
        for m in section.memory
        if m not in prefill_outputs
    ]
    expected = {section.tokens, *past, *section.memory}
    extra = [n for n in decode.input_names if n not in expected]
    missing_memory = [m for m in section.memory if m not in decode.input_names]
    if extra:
        problems.append(
            f"{display(decode.name)} has inputs the cache does not feed: {', '.join(map(quoted, extra))}"
        )
    if missing_memory:
        problems.append(
            f"{display(decode.name)} has no input {', '.join(map(quoted, missing_memory))}"
        )
    leaked = [n for n in prefill.input_names if n.startswith("past_key_values.")]
    if leaked:
        problems.append(
            f"{display(prefill.name)} takes {quoted(leaked[0])}: a prefill starts from an empty cache"
        )
    if problems:
        raise ModelError(
            f"{path}: the KV-cache graphs do not fit its decoder section: " + "; ".join(problems)
        )


class _FullSteps:
    """No cache: every step runs the full model on the whole sequence."""

    def __init__(self, gen: Generator, fixed: Mapping[str, Any]) -> None:
        self.model = gen.full
        self.tokens, self.logits = gen.tokens, gen.logits
        self.fixed = dict(fixed)

    def first(self, ids: np.ndarray) -> np.ndarray:
        return self.next(ids)

    def next(self, ids: np.ndarray) -> np.ndarray:
        assert self.model is not None
        out = self.model.run({**self.fixed, self.tokens: np.ascontiguousarray(ids)})
        return np.asarray(out[self.logits])[:, -1]


class _CachedSteps:
    """prefill once, then decode_step on the last token with the cache (and memory) fed back.

    With IOBinding the present and memory outputs stay onnxruntime values on the model's device and are bound
    as the next step's inputs: on a GPU the cache never travels to the host; only the last logits do.
    """

    def __init__(self, gen: Generator, fixed: Mapping[str, Any]) -> None:
        assert gen.prefill is not None and gen.decode_step is not None
        self.gen = gen
        self.fixed = dict(fixed)
        self.state: dict[str, Any] = {}
        self.bindings: dict[str, Any] = {}  # one io_binding per graph, rebound every step
        self.feedback = [
            (PRESENT.format(i, k), PAST.format(i, k))
            for i in range(gen.layers)
            for k in ("key", "value")
        ]

    def first(self, ids: np.ndarray) -> np.ndarray:
        gen = self.gen
        assert gen.prefill is not None
        feeds = {**self.fixed, gen.tokens: ids}
        gen.prefill.validate(
            feeds
        )  # the caller's inputs: a clear InputError before onnxruntime sees them
        kept = [p for p, _ in self.feedback] + list(gen.memory)
        outputs = self._run(gen.prefill, feeds, kept)
        self.state = {past: outputs[present] for present, past in self.feedback}
        self.state.update({m: outputs[m] for m in gen.memory})
        return outputs[gen.logits]

    def next(self, ids: np.ndarray) -> np.ndarray:
        gen = self.gen
        assert gen.decode_step is not None
        feeds = {**self.state, gen.tokens: np.ascontiguousarray(ids[:, -1:])}
        outputs = self._run(gen.decode_step, feeds, [p for p, _ in self.feedback])
        for present, past in self.feedback:
            self.state[past] = outputs[present]
        return outputs[gen.logits]

    def _run(self, model: Model, feeds: dict[str, Any], kept: list[str]) -> dict[str, Any]:
        """Run ``model``; the ``kept`` outputs come back as they are, the logits as the last position's numpy."""
        if not self.gen.io_binding:
            out = model.run(feeds)
            out[self.gen.logits] = np.asarray(out[self.gen.logits])[:, -1]
            return out
        binding = self.bindings.get(model.name)
        if binding is None:
            binding = self.bindings[model.name] = model.session.io_binding()
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        device, device_id = self.gen.device, model.device_id
        names = model.output_names
        for name in names:
            if name in kept:
                binding.bind_output(name, device, device_id)
            else:  # the logits (and outputs nothing reads): copied to the host
                binding.bind_output(name, "cpu")
        try:
            model.session.run_with_iobinding(binding)
            binding.synchronize_outputs()
        except _ORT_ERRORS as exc:
            raise model._run_error(
                exc, {k: v for k, v in feeds.items() if isinstance(v, np.ndarray)}
            ) from None
        values = dict(zip(names, binding.get_outputs(), strict=True))
        logits = values[self.gen.logits].numpy()
        values[self.gen.logits] = logits[:, -1]
        return values


def generate(
    model: str | os.PathLike[str] | Generator,
    prompt: Any,
    max_new_tokens: int = 20,
    **options: Any,
) -> np.ndarray:
    """``Generator.load(model).generate(prompt, max_new_tokens, **options)`` (``model`` may be a Generator).

    Loading options (``model_name=``, ``providers=``, ``cache=``) are taken out of ``options``.
    """
    if not isinstance(model, Generator):
        load = {k: options.pop(k) for k in ("providers", "cache", "io_binding") if k in options}
        if "model_name" in options:
            load["model"] = options.pop("model_name")
        model = Generator.load(model, **load)
    return model.generate(prompt, max_new_tokens, **options)
