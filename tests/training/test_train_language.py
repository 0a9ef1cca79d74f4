"""The train section is the model language: the same ops and shape rules, located errors at check
time, each model call run once per step, and step code that runs as checked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from dslc.build import load_generated
from dslc.checker import check_file
from dslc.emit_torch import emit_program
from dslc.emit_train import emit_train_script
from dslc.errors import DslcError
from dslc.layers import REGISTRY

# One call of every tensor function, over the digits fields image float32[batch, 1, 8, 8] and label int64[batch].
CALLS = {
    "abs": "abs(image)",
    "relu6": "relu6(image)",
    "hardswish": "hardswish(image)",
    "hardsigmoid": "hardsigmoid(image)",
    "mish": "mish(image)",
    "cumsum": "cumsum(image, dim=-1)",
    "cumprod": "cumprod(label, dim=0)",
    "flip": "flip(image, 2, 3)",
    "roll": "roll(image, 1, dims=-1)",
    "pad": 'pad(image, (1, 1, 2, 2), mode="reflect")',
    "gather": "gather(image, topk(image, 2)[1], dim=-1)",
    "one_hot": "one_hot(label, 10)",
    "masked_fill": "masked_fill(image, image > 0.5, 0.0)",
    "topk": "topk(image, 3)[0]",
    "expand_batch": "expand_batch(image[:1], image)",
    "interpolate": "interpolate(image, scale_factor=2)",
    "argmax": "argmax(image, dim=-1)",
    "cat": "cat(image, image, dim=1)",
    "chunk": "chunk(image, 2, dim=2)[0]",
    "clamp": "clamp(image, min=0.0)",
    "cos": "cos(image)",
    "detach": "detach(image)",
    "elu": "elu(image)",
    "exp": "exp(image)",
    "flatten": "flatten(image)",
    "float": "float(label)",
    "floor_div": "floor_div(label, 2)",
    "gelu": "gelu(image)",
    "Identity": "Identity(image)",
    "leaky_relu": "leaky_relu(image)",
    "log": "log(sigmoid(image))",
    "log_softmax": "log_softmax(image, dim=-1)",
    "long": "long(image)",
    "max": "max(image, dim=1)",
    "mean": "mean(image, dim=1)",
    "min": "min(image, dim=1)",
    "ones_like": "ones_like(label)",
    "permute": "permute(image, 0, 2, 3, 1)",
    "position_ids": "position_ids(flatten(image))",
    "positions": "positions(image, dim=2)",
    "attention": "attention(image[:, 0], image[:, 0], image[:, 0], heads=2, causal=true)",
    "rotary": "rotary(image[:, 0], heads=2)",
    "relu": "relu(image)",
    "repeat": "repeat(image, 3, dim=1)",
    "reshape": "reshape(image, batch, 64)",
    "rsqrt": "rsqrt(sigmoid(image))",
    "shift_right": "shift_right(long(flatten(image)), fill=1)",
    "sigmoid": "sigmoid(image)",
    "silu": "silu(image)",
    "sin": "sin(image)",
    "softmax": "softmax(image, dim=-1)",
    "softplus": "softplus(image)",
    "split": "split(image, 2, dim=3)[1]",
    "sqrt": "sqrt(sigmoid(image))",
    "squeeze": "squeeze(image, dim=1)",
    "stack": "stack(image, image, dim=1)",
    "sum": "sum(label)",
    "tanh": "tanh(image)",
    "transpose": "transpose(image, 2, 3)",
    "unsqueeze": "unsqueeze(label, dim=1)",
    "where": "where(image > 0.0, image, zeros_like(image))",
    "zeros_like": "zeros_like(image)",
}
MODEL = """
model net {{
    input image: float32[batch, 1, 8, 8]
    input label: int64[batch]
    output logits = image -> Flatten -> Linear(10)
{outputs}
}}
"""


def _functions() -> set[str]:
    """Every op a model body and a train section may call, by its registry name."""
    return {op.name for op in REGISTRY.values() if op.category != "layer" and not op.train_only}


def test_every_tensor_function_is_covered():
    covered = {REGISTRY[name].name for name in CALLS}
    assert _functions() <= covered, f"add a call to CALLS for {sorted(_functions() - covered)}"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "net.model"
    path.write_text(text)
    return path


def _generated(tmp_path: Path, path: Path):
    program = check_file(path)
    stem = program.module_name
    (tmp_path / f"{stem}.py").write_text(emit_program(program))
    script = tmp_path / f"{stem}_train.py"
    script.write_text(emit_train_script(program))
    sys.modules.pop(stem, None)  # the script imports its model code by name, from its own folder
    return program, load_generated(script)


def _batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"image": torch.rand(3, 1, 8, 8), "label": torch.randint(0, 10, (3,))}


def test_every_tensor_function_works_in_a_model_and_in_a_train_section(tmp_path):
    outputs = "\n".join(f"    output out_{i} = {call}" for i, call in enumerate(CALLS.values()))
    lets = "\n".join(f"    t{i} = {call}" for i, call in enumerate(CALLS.values()))
    terms = " + ".join(f"mean(float(t{i}))" for i in range(len(CALLS)))
    train = f"train {{\n    data = digits(image_size=8)\n{lets}\n    loss = cross_entropy(logits, label) + 0.0 * ({terms})\n}}\n"
    path = _write(tmp_path, MODEL.format(outputs=outputs) + train)
    program, script = _generated(tmp_path, path)
    model = script.MODELS["net"]()
    batch = _batch()
    model_outputs = model(batch["image"], batch["label"])
    loss, _ = script.step_train({"net": model}, script.prepare({"net": model}, batch))
    assert loss.shape == () and torch.isfinite(loss)
    checked = program.model("net").outputs
    for port, value in zip(checked, model_outputs):  # the model computes what the checker inferred
        assert value.dtype == getattr(torch, port.type.dtype), port.name
        assert value.dim() == port.type.rank, port.name
        assert all(d == n for d, n in zip(port.type.shape, value.shape) if isinstance(d, int)), port.name


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(DslcError) as info:
        check_file(_write(tmp_path, text))
    return str(info.value)


CNN28 = """
model cnn {
    input image: float32[batch, 1, 28, 28]
    output logits = image -> Flatten -> Linear(10)
}
"""


def test_a_shape_mismatch_in_a_train_tensor_is_a_located_check_error(tmp_path):
    text = _error(
        tmp_path,
        CNN28 + "train {\n    data = digits(image_size=28)\n    noisy = image + 0.3 * normal(batch, 1, 32, 32)\n"
        "    loss = cross_entropy(cnn(noisy), label)\n}\n",
    )
    assert "net.model:8:13: error: shapes [batch, 1, 28, 28] and [batch, 1, 32, 32] do not broadcast for '+'" in text
    assert text.count("error:") == 1  # the loss reading `noisy` reports nothing more


def test_a_loss_over_mismatched_shapes_is_a_located_check_error(tmp_path):
    text = _error(tmp_path, CNN28 + "train {\n    data = digits(image_size=28)\n    loss = mse(logits, image)\n}\n")
    assert "net.model:8:12: error: mse: input [batch, 10] and target [batch, 1, 28, 28] differ in shape" in text


def test_class_ids_must_match_the_scores(tmp_path):
    text = _error(
        tmp_path,
        CNN28 + "train {\n    data = digits(image_size=28)\n    loss = cross_entropy(logits, unsqueeze(label, 1))\n}\n",
    )
    assert "class ids must have one dimension less" in text


def test_losses_and_noise_belong_in_the_train_section(tmp_path):
    text = _error(
        tmp_path,
        "model m {\n    input x: float32[batch, 4]\n    output y = x + normal(batch, 4)\n}\n",
    )
    assert "normal is a random draw: it belongs in the train section, not in a model" in text
    text = _error(
        tmp_path,
        "model m {\n    input x: float32[batch, 4]\n    output y = mse(x, x)\n}\n",
    )
    assert "mse is a loss: it belongs in the train section" in text


def test_layers_belong_in_a_model(tmp_path):
    text = _error(
        tmp_path,
        CNN28 + "train {\n    data = digits(image_size=28)\n    h = image -> Flatten -> Linear(10)\n"
        "    loss = cross_entropy(h, label)\n}\n",
    )
    assert "Linear is a layer with state; layers belong in a model" in text


def test_a_model_call_binds_the_model_sizes_to_its_arguments(tmp_path):
    text = _error(
        tmp_path,
        """
model tagger {
    input tokens: int64[batch, time]
    input tags: int64[batch, time]
    output logits = tokens -> Embedding(100, 8) -> Linear(5)
}
train {
    data = sequences(vocab=100, length=12)
    loss = cross_entropy(tagger(source, shift_right(target)[:, :6]), source)
}
""",
    )
    assert "'time' is 12 for an earlier input but 6 here" in text


def test_a_refused_name_is_reported_once(tmp_path):
    text = _error(
        tmp_path,
        CNN28 + "train {\n    data = digits(image_size=28)\n    totals = logits * 2.0\n"
        "    loss = cross_entropy(totals, label)\n}\n",
    )
    assert "'totals' is a name the generated training script uses" in text
    assert text.count("error:") == 1


GAN = Path(__file__).resolve().parents[2] / "specs" / "gan.model"


def test_the_gan_step_runs_the_discriminator_once_per_batch_it_scores(tmp_path):
    spec = tmp_path / "gan.model"
    spec.write_text(GAN.read_text())
    _, script = _generated(tmp_path, spec)
    models = {name: cls() for name, cls in script.MODELS.items()}
    calls = []
    models["discriminator"].register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    batch = script.prepare(models, {"image": torch.rand(4, 1, 28, 28), "label": torch.zeros(4, dtype=torch.long)})
    script.step_discriminator(models, batch)
    assert len(calls) == 2  # real images, then the detached fakes
    calls.clear()
    script.step_generator(models, batch)
    assert len(calls) == 1


def test_class_ids_read_from_the_data_are_range_checked_once(tmp_path):
    from dslc.training.config import LabelCheck

    program = check_file(
        _write(
            tmp_path, CNN28 + "train {\n    data = digits(image_size=28)\n    loss = cross_entropy(logits, label)\n}\n"
        )
    )
    assert program.train.label_checks == [LabelCheck("label", 10, -100)]
    assert 'data.check_labels("label", classes=10, ignore_index=-100)' in emit_train_script(program)


def test_a_loss_written_with_operators_keeps_its_precedence(tmp_path):
    spec = """
model vae {
    input features: float32[batch, 10]
    output mu = features -> Linear(2)
    output logvar = features -> Linear(2)
    output rec = features -> Linear(10) -> Sigmoid
}
train {
    data = diabetes()
    loss = 1.0 / bce(rec, sigmoid(rec), reduction="batchmean") - kl_normal(mu, logvar) * 2.0
}
"""
    _, script = _generated(tmp_path, _write(tmp_path, spec))
    model = script.MODELS["vae"]()
    features = torch.rand(5, 10)
    loss, _ = script.step_train({"vae": model}, {"features": features})
    mu, logvar, rec = model(features)
    bce = torch.nn.functional.binary_cross_entropy(rec, torch.sigmoid(rec), reduction="sum") / 5
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1).mean()
    torch.testing.assert_close(loss, 1.0 / bce - kl * 2.0)


def test_the_ir_dump_shows_each_step_with_one_call_per_distinct_input():
    from dslc.ir_text import dump

    text = dump(check_file(GAN))
    step = text[text.index("step discriminator:") : text.index("step generator:")]
    assert step.startswith("step discriminator: reads image, fake; calls discriminator")
    assert step.count("model discriminator(") == 2
    assert "model discriminator(detach(fake)).0 : float32[batch, 1]" in step
    assert text.count("model generator(z)") == 1  # in prepare: shared by both steps


SCHEDULE_CASES = {
    "constant": ("constant(warmup=0.5)", lambda lrs: lrs[0] < lrs[4] == lrs[-1] == 1e-2),
    "step": ("step(every=1, gamma=0.5)", lambda lrs: lrs[9] == 1e-2 and abs(lrs[10] - 5e-3) < 1e-12),
    "cosine": ("cosine(min_factor=0.1)", lambda lrs: lrs[0] == 1e-2 and abs(lrs[-1] - 1e-3) < 1e-4),
    "linear": ("linear(warmup=0.2, min_factor=0.5)", lambda lrs: lrs[1] == 1e-2 and abs(lrs[-1] - 5e-3) < 3e-4),
    "one_cycle": ("one_cycle(max_lr=0.1)", lambda lrs: max(lrs) > 9e-2 and lrs[-1] < lrs[0]),
}


@pytest.mark.parametrize("name", sorted(SCHEDULE_CASES))
def test_every_schedule_writes_a_scheduler_that_follows_its_formula(tmp_path, name):
    from dslc.training.functions import SCHEDULES

    assert set(SCHEDULE_CASES) == set(SCHEDULES)  # a new schedule needs its case here
    schedule, follows = SCHEDULE_CASES[name]
    spec = CNN28 + (
        f"train {{\n    data = digits(image_size=28)\n    loss = cross_entropy(logits, label)\n"
        f"    optimizer = sgd(lr=1e-2)\n    schedule = {schedule}\n}}\n"
    )
    _, script = _generated(tmp_path, _write(tmp_path, spec))
    models = {"cnn": script.MODELS["cnn"]()}
    optimizer, scheduler = script.make_optimizer_train(models, 10, 2)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert follows(lrs), lrs


NET8 = """
model net {
    input image: float32[batch, 1, 8, 8]
    output logits = image -> Flatten -> Linear(16) -> ReLU -> Linear(10)
}
"""


def test_a_model_whose_output_a_train_tensor_reads_runs_once_per_batch(tmp_path):
    spec = NET8 + (
        "train {\n    data = digits(image_size=8)\n    soft = detach(softmax(logits, dim=-1))\n"
        "    loss = cross_entropy(logits, label) + 0.1 * cross_entropy(logits, soft)\n}\n"
    )
    _, script = _generated(tmp_path, _write(tmp_path, spec))
    models = {"net": script.MODELS["net"]()}
    calls = []
    models["net"].register_forward_hook(lambda *_: calls.append(1))
    script.step_train(models, script.prepare(models, _batch()))
    assert len(calls) == 1  # in prepare(); the step reads `logits` from the batch


@pytest.mark.parametrize(
    "tensor, expected",
    [
        ("image = normal(batch, 3)", "train tensor 'image' has the name of a dataset field"),
        ("logits = normal(batch, 10)", "train tensor 'logits' has the name of an output of model 'net'"),
    ],
)
def test_a_train_tensor_may_not_hide_a_field_or_a_model_output(tmp_path, tensor, expected):
    text = _error(
        tmp_path,
        NET8 + f"train {{\n    data = digits(image_size=8)\n    {tensor}\n"
        "    loss = cross_entropy(logits, label)\n}\n",
    )
    assert expected in text and text.count("error:") == 1


def test_a_loss_that_reaches_no_trained_parameter_is_refused(tmp_path):
    text = _error(
        tmp_path,
        NET8 + "train {\n    data = digits(image_size=8)\n    loss = mse(detach(logits), zeros_like(logits))\n}\n",
    )
    assert "the loss does not reach the parameters of 'net', which the optimizer trains" in text
    gan = GAN.read_text().replace(
        "bce_with_logits(discriminator(fake)[0], 1.0)", "bce_with_logits(discriminator(detach(fake))[0], 1.0)"
    )
    text = _error(tmp_path, gan)
    assert "step 'generator': the loss does not reach the parameters of 'generator'" in text
    assert "the loss reaches discriminator" in text


def test_indexing_a_single_output_model_call_is_refused(tmp_path):
    text = _error(
        tmp_path, NET8 + "train {\n    data = digits(image_size=8)\n    loss = cross_entropy(net(image)[0], label)\n}\n"
    )
    assert "model 'net' has one output ('logits'), so this index would pick its rows, not an output" in text


def test_blocks_and_numbers_in_train_functions(tmp_path):
    block = "block Head(n: int) {\n    input x: float32[batch, k]\n    output y = x -> Linear(n)\n}\n"
    text = _error(
        tmp_path,
        block + NET8 + "train {\n    data = digits(image_size=8)\n    h = Head(logits)\n"
        "    loss = cross_entropy(logits, label)\n}\n",
    )
    assert "'Head' is a block; blocks belong in a model, not in the train section" in text
    spec = NET8 + (
        "train {\n    data = digits(image_size=8)\n    weight = where(label > 3, 2.0, 1.0)\n"
        "    loss = mean(weight * mean(logits, dim=1))\n}\n"
    )
    _, script = _generated(tmp_path, _write(tmp_path, spec))
    batch = script.prepare({"net": script.MODELS["net"]()}, _batch())
    assert set(batch["weight"].tolist()) <= {1.0, 2.0}


def test_bce_on_probabilities_runs_outside_autocast(tmp_path):
    spec = tmp_path / "vae.model"
    spec.write_text((Path(__file__).resolve().parents[2] / "specs" / "vae.model").read_text())
    _, script = _generated(tmp_path, spec)
    assert "with torch.autocast(DEVICE.type, enabled=False):" in Path(script.__file__).read_text()
    models = {name: cls() for name, cls in script.MODELS.items()}
    batch = script.prepare(models, {"image": torch.rand(4, 1, 28, 28), "label": torch.zeros(4, dtype=torch.long)})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = script.step_train(models, batch)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


# One use of every augmentation (`augment = [...]`, dslc.training.augment), over the digits field image.
AUGMENT_CALLS = {
    "random_crop": "random_crop(image, padding=2)",
    "random_flip": "random_flip(image, p=0.5, vertical=true)",
    "random_rotation": "random_rotation(image, degrees=15)",
    "noise": "noise(image, std=0.05)",
}


def test_every_augmentation_is_covered_checks_and_runs(tmp_path):
    from dslc.training.augment import AUGMENTATIONS, apply

    assert set(AUGMENT_CALLS) == set(AUGMENTATIONS), "add a call to AUGMENT_CALLS"
    spec = NET8 + (
        f"train {{\n    data = digits(image_size=8)\n    augment = [{', '.join(AUGMENT_CALLS.values())}]\n"
        "    loss = cross_entropy(logits, label)\n}\n"
    )
    program, _ = _generated(tmp_path, _write(tmp_path, spec))
    plan = program.train.augment
    assert [a["name"] for a in plan] == list(AUGMENT_CALLS) and program.train.settings["augment"] == plan
    batch = _batch()
    out = apply(plan, batch)
    assert out["image"].shape == batch["image"].shape and not torch.equal(out["image"], batch["image"])
    assert torch.equal(out["label"], batch["label"])
