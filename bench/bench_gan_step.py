"""GAN training step: the generated step functions of specs/gan.model vs a hand-written PyTorch step.

The hand-written step is the textbook one: draw noise, G(z) once, D on the real batch and on the
detached fakes (the discriminator's loss and Adam step), then D on the fakes (the generator's loss
and step): three discriminator calls per step. The generated one runs `prepare()` and the two
`step_*()` functions of the training script dslc writes, with the same models, optimizers and
backward calls as its loop. Both run interleaved in the same process on the same batches; printed:
steps/s of each and the median ratio generated / hand-written over the rounds, and the number of
discriminator forward calls per step (forward hooks). `--script DIR` also times another build's
gan_train.py (e.g. one an older dslc wrote: `git worktree add /tmp/old <commit>` and `dslc build`
there), with the same models, for a before/after figure.

    python bench/bench_gan_step.py [--steps 200] [--rounds 5] [--threads 1] [--script DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dslc.build import load_generated  # noqa: E402
from dslc.checker import check_file  # noqa: E402
from dslc.emit_torch import emit_program  # noqa: E402
from dslc.emit_train import emit_train_script  # noqa: E402

SPEC = ROOT / "specs" / "gan.model"
BATCH = 64


def generated_script(folder: Path):
    """The gan spec's model code and training script, written by this dslc into `folder`."""
    program = check_file(SPEC)
    (folder / "gan.py").write_text(emit_program(program))
    script = folder / "gan_train.py"
    script.write_text(emit_train_script(program))
    (folder / "gan.model").write_text(program.source)
    return load_script(script)


def load_script(script: Path):
    sys.modules.pop("gan", None)  # each script imports the model code next to it by name
    return load_generated(script)


class Trainer:
    """Models and Adam optimizers as the spec trains them (lr 2e-4, betas (0.5, 0.999)), a step at a time."""

    def __init__(self, models_class: dict, seed: int = 0):
        torch.manual_seed(seed)
        self.models = {name: cls() for name, cls in models_class.items()}
        self.generator, self.discriminator = self.models["generator"], self.models["discriminator"]
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.params_d, self.params_g = list(self.discriminator.parameters()), list(self.generator.parameters())
        self.calls = 0
        self.discriminator.register_forward_hook(lambda *_: self._count())

    def _count(self) -> None:
        self.calls += 1

    def hand_written(self, image: torch.Tensor) -> None:
        fake = self.generator(torch.randn(len(image), 100))
        real_logit, _ = self.discriminator(image)
        fake_logit, _ = self.discriminator(fake.detach())
        loss_d = F.binary_cross_entropy_with_logits(
            real_logit, torch.ones_like(real_logit)
        ) + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
        self._update(loss_d, self.opt_d, self.params_d)
        logit, _ = self.discriminator(fake)
        self._update(F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit)), self.opt_g, self.params_g)

    def generated(self, script, image: torch.Tensor) -> None:
        batch = script.prepare(self.models, {"image": image, "label": torch.zeros(len(image), dtype=torch.long)})
        loss_d, _ = script.step_discriminator(self.models, batch)
        self._update(loss_d, self.opt_d, self.params_d)
        loss_g, _ = script.step_generator(self.models, batch)
        self._update(loss_g, self.opt_g, self.params_g)

    @staticmethod
    def _update(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: list) -> None:
        loss.backward(inputs=params)  # as the generated loop does with two steps
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def steps_per_second(run, images: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    for image in images:
        run(image)
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--script", type=Path, default=None, help="a folder holding another build's gan_train.py")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = [torch.rand(BATCH, 1, 28, 28) for _ in range(args.steps)]
    with tempfile.TemporaryDirectory() as tmp:
        scripts = {"generated": generated_script(Path(tmp))}
        if args.script is not None:
            scripts["other"] = load_script(args.script / "gan_train.py")
        contenders = {"hand-written": lambda t: t.hand_written}
        contenders |= {
            name: (lambda t, s=script: lambda image: t.generated(s, image)) for name, script in scripts.items()
        }
        trainers = {name: Trainer(scripts["generated"].MODELS) for name in contenders}
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        for round_ in range(args.rounds + 1):  # round 0 is warm-up
            order = list(contenders) if round_ % 2 else list(reversed(contenders))
            for name in order:
                rate = steps_per_second(contenders[name](trainers[name]), images)
                if round_:
                    rates[name].append(rate)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), batch {BATCH}, {args.rounds} rounds of {args.steps} steps"
    )
    calls_per_step = {name: trainer.calls / ((args.rounds + 1) * args.steps) for name, trainer in trainers.items()}
    base = rates["hand-written"]
    for name, values in rates.items():
        ratio = statistics.median(v / b for v, b in zip(values, base))
        print(
            f" {name:>12}: {statistics.median(values):7.1f} steps/s, "
            f"{calls_per_step[name]:.0f} discriminator calls per step, ratio to hand-written {ratio:.3f}"
        )


if __name__ == "__main__":
    main()
