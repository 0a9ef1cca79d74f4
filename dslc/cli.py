"""The `dslc` command line. Errors are printed as located diagnostics, never as tracebacks."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from pathlib import Path

import click

from dslc import __version__
from dslc.errors import DslcError, error
from dslc.pytext import module_name
from dslc.training import flags as train_flags
from dslc.training.interrupts import RunInterruptedError


def _report_errors(func):
    """Turn DslcError into a located message and exit 1; anything else is an internal error."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        debug = ctx.find_root().params.get("debug", False)
        try:
            return func(*args, **kwargs)
        except DslcError as exc:
            click.echo(exc.render(), err=True)
            n = len(exc.diagnostics)
            click.echo(f"{n} error{'s' if n != 1 else ''}", err=True)
            sys.exit(1)
        except _runtime_errors() as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except RunInterruptedError as stop:  # Ctrl-C or SIGTERM while training: a checkpoint was saved
            if stop.message:
                click.echo(stop.message, err=True)
            sys.exit(stop.code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:  # `dslc ... | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error flushing stdout at exit
            sys.exit(141)  # as a shell reports SIGPIPE
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # an internal error: say so, show the traceback only on request
            from dslc.extras import missing_extra

            missing = missing_extra(exc)  # an optional package (scikit-learn, matplotlib, ...) is not installed
            if missing is not None:
                click.echo(missing.render(), err=True)
                sys.exit(1)
            known = known_torch_error(exc)
            if known is not None:
                click.echo(f"error: {known}", err=True)
                sys.exit(1)
            if debug:
                traceback.print_exc()
            click.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
            if not debug:
                click.echo("this is a bug in dslc; run with --debug for the traceback", err=True)
            sys.exit(2)

    return wrapper


def known_torch_error(exc: Exception) -> str | None:
    """What a PyTorch error that bad data or a misused loss causes means, in the spec's terms (None: a bug)."""
    text = str(exc)
    if isinstance(exc, IndexError) and "index out of range in self" in text:  # nn.Embedding's words
        return (
            "an Embedding was given an id beyond its table: token ids at or above its vocabulary size, or more "
            "positions than its table has (sequences longer than the model's position embedding: shorten them, "
            "e.g. text_lm's length)"
        )
    if isinstance(exc, RuntimeError) and text.startswith("Class values must be"):  # F.one_hot's words
        return (
            f"one_hot was given a class id outside [0, num_classes) ({text.rstrip('.')}): the ids it codes must lie "
            "below its num_classes"
        )
    if isinstance(exc, RuntimeError) and "elements of " in text and "should be between 0 and 1" in text:
        return (  # binary_cross_entropy's
            f"bce takes probabilities and targets in [0, 1], but was given values outside ({text}): give it "
            "sigmoid(scores), or use bce_with_logits(scores, target) on raw scores"
        )
    return None


def _runtime_errors() -> tuple[type[Exception], ...]:
    try:
        from dslc_runtime import DslcRuntimeError
    except ImportError:
        return ()
    return (DslcRuntimeError,)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dslc")
@click.option("--debug", is_flag=True, help="Show Python tracebacks for internal errors.")
def main(debug: bool) -> None:
    """dslc: declarative neural networks compiled to PyTorch and ONNX.

    \b
    Example:
      dslc check specs/cnn.model --shapes
      dslc build specs/cnn.model -o build/cnn
    """


_set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a constant or a train setting (hidden=16, epochs=3, optimizer.lr=0.01; repeatable).",
)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--shapes", is_flag=True, help="Print every layer's output shape and parameter count.")
@click.option("--ir", "show_ir", is_flag=True, help="Print the checked IR as text (stable, diffable).")
@_set_option
@_report_errors
def check(files: tuple[str, ...], shapes: bool, show_ir: bool, overrides: tuple[str, ...]) -> None:
    """Parse and shape-check spec files (no torch needed). Exit 0 when clean, 1 on errors.

    \b
    Example:
      dslc check specs/*.model
      dslc check specs/mlp.model --shapes --set hidden=16 --set optimizer.lr=0.01
      dslc check specs/resnet18.model --ir
    """
    from dslc.checker import check_file
    from dslc.training.overrides import split_overrides

    failures: list[DslcError] = []
    for path in files:
        try:
            program = check_file(path, *split_overrides(path, list(overrides)))
        except DslcError as exc:
            failures.append(exc)
            continue
        params, shared = program.parameter_counts()
        names = ", ".join(m.spec_name for m in program.exported)
        note = f", {shared:,} of them shared by name between the models" if shared else ""
        click.echo(f"{path}: ok ({names}; {params:,} parameters{note})")
        if shapes:
            _print_shapes(program)
        if show_ir:
            from dslc.ir_text import dump

            click.echo(dump(program), nl=False)
    if failures:
        raise DslcError(
            [d for f in failures for d in f.diagnostics], {k: v for f in failures for k, v in f.sources.items()}
        )


def _print_shapes(program) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    for module in program.modules:
        table = Table(title=escape(f"{module.kind} {module.signature}"), title_justify="left")
        for column in ("line", "layer", "op", "output", "params"):
            table.add_column(column, justify="right" if column in ("line", "params") else "left")
        tied = {t.target.split(".")[0]: t for t in module.ties}  # counted in the total once, under the source
        for rec in module.records:
            params = f"{rec.params:,}" + (f" (tied: -{tied[rec.module].size:,})" if rec.module in tied else "")
            table.add_row(str(rec.loc.line), escape(rec.module), escape(rec.what), escape(rec.output), params)
        table.add_row("", "", "total", "", f"{module.param_count:,}", style="bold")
        console.print(table)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--out",
    "out_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Output directory (default: build/<stem>).",
)
@click.option("--no-onnx", is_flag=True, help="Write only the PyTorch code.")
@click.option("--no-verify", is_flag=True, help="Skip running the ONNX graph against PyTorch.")
@click.option(
    "--precision",
    type=click.Choice(train_flags.PRECISIONS),
    multiple=True,
    help=f"{train_flags.PRECISION_HELP} (repeatable).",
)
@click.option("--quantize", type=click.Choice(["int8"]), default=None, help=f"{train_flags.QUANTIZE_HELP}.")
@_set_option
@_report_errors
def build(
    spec: str,
    out_dir: str | None,
    no_onnx: bool,
    no_verify: bool,
    precision: tuple[str, ...],
    quantize: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Compile a spec to PyTorch code and verified ONNX graphs.

    \b
    Example:
      dslc build specs/cnn.model -o build/cnn
    """
    from dslc.build import build as run_build
    from dslc.training.overrides import split_overrides

    consts, settings = split_overrides(spec, list(overrides))
    out = Path(out_dir or Path("build") / module_name(Path(spec).stem))
    for option, value in (("--precision", precision), ("--quantize", quantize)):
        if value and (no_onnx or no_verify):
            off = "--no-onnx" if no_onnx else "--no-verify"
            raise error(None, f"{option} writes a second, verified ONNX file, which {off} turns off", f"drop {off}")
    result = run_build(
        spec,
        out,
        consts,
        export_onnx=not no_onnx,
        verify_onnx=not no_verify,
        train_overrides=settings,
        variants=train_flags.variants(precision, quantize),
    )
    click.echo(f"wrote {result.python_path}")
    train_script = result.python_path.with_name(f"{result.python_path.stem}_train.py")
    if result.program.train is not None and train_script.exists():
        click.echo(
            f"wrote {train_script} (the training script; `python {train_script.name}` trains as `dslc train` does)"
        )
    for report in result.models:
        click.echo(report.summary(out))
        for v in report.variants:
            click.echo(v.summary(out))
        for note in report.notes:
            click.echo(f"note: {note}")
        if report.decoder:
            click.echo(report.decoder.summary(out))


# ---------------------------------------------------------------- tools: fmt, graph, init, completion


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--check", is_flag=True, help="Change nothing; list the files that would change and exit 1 if any.")
@click.option(
    "--diff", is_flag=True, help="Change nothing; print a unified diff of the changes (with --check: exit 1 too)."
)
@_report_errors
def fmt(files: tuple[str, ...], check: bool, diff: bool) -> None:
    """Rewrite spec files in the canonical layout, keeping every comment.

    Lines are at most 100 columns: long pipelines, calls, lists and block headers are wrapped.

    \b
    Example:
      dslc fmt specs/*.model
      dslc fmt --check specs/*.model   # in CI: exit 1 if a file is not formatted
      dslc fmt --diff specs/cnn.model  # show what would change
    """
    from dslc.fmt import format_diff, format_file

    changed = []
    for path in files:
        if diff:
            text = format_diff(path)
            if text:
                click.echo(text, nl=False)
                changed.append(path)
        elif format_file(path, check=check):
            changed.append(path)
    if not diff:
        for path in changed:
            click.echo(f"{'would reformat' if check else 'reformatted'} {path}")
    if check and changed:
        sys.exit(1)


@main.command()
@click.option("--stdio", is_flag=True, help="Talk over standard input and output (the default and only transport).")
def lsp(stdio: bool) -> None:
    """Run the language server: diagnostics, hover with shapes, completion, definitions, symbols,
    formatting and inlay hints for editors (needs the `lsp` extra: pip install 'dslc[lsp]').

    \b
    Example:
      dslc lsp    # started by the editor; see docs/editors.md for VS Code, Neovim and Helix
    """
    try:
        from dslc.lsp.server import main as serve
    except ImportError as exc:
        click.echo(
            f"error: dslc lsp needs pygls and lsprotocol ({exc}); install them with: pip install 'dslc[lsp]'", err=True
        )
        sys.exit(1)
    serve()


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option(
    "-o", "--out", "out", required=True, type=click.Path(dir_okay=False), help="Output file: .svg, .png, .pdf or .dot."
)
@click.option("--expand/--collapse", default=True, help="Draw blocks as clusters of their layers, or as single boxes.")
@click.option("--model", "model_name", default=None, help="Draw only this model (default: every exported model).")
@_set_option
@_report_errors
def graph(spec: str, out: str, expand: bool, model_name: str | None, overrides: tuple[str, ...]) -> None:
    """Draw the checked model: layers, blocks as clusters, tensor shapes on the edges.

    Rendering .svg/.png/.pdf needs Graphviz's `dot` on PATH; .dot works without it.

    \b
    Example:
      dslc graph specs/transformer_encoder.model -o model.svg
      dslc graph specs/resnet18.model -o model.png --collapse
    """
    from dslc.graph import write_graph

    write_graph(spec, out, expand=expand, model=model_name, overrides=list(overrides))
    click.echo(f"wrote {out}")


@main.command()
@click.argument("name")
@click.option(
    "--template",
    default="cnn",
    show_default=True,
    type=click.Choice(["cnn", "mlp", "rnn", "transformer", "gan"]),
    help="The kind of network to start from.",
)
@_report_errors
def init(name: str, template: str) -> None:
    """Start a new spec NAME.model from a template that checks, builds and trains.

    \b
    Example:
      dslc init digits --template cnn
      dslc check digits.model --shapes && dslc build digits.model
    """
    from dslc.templates import write_template

    path = write_template(name, template)
    click.echo(f"wrote {path}; next: dslc check {path} --shapes")


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for dslc.

    \b
    Example:
      dslc completion bash > ~/.local/share/bash-completion/completions/dslc
      eval "$(dslc completion zsh)"        # in ~/.zshrc
      dslc completion fish > ~/.config/fish/completions/dslc.fish
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    click.echo(cls(main, {}, "dslc", "_DSLC_COMPLETE").source())


class _TrainCommand(click.Command):
    """`dslc train`: an unknown flag's error gives the flag or `--set` key meant (`--lr`, `--batch`, `--epoch`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        from dslc.training.flags import near_miss

        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            hint = near_miss(exc.option_name, script=False)
            if hint is None:
                raise
            raise click.NoSuchOption(exc.option_name, f"No such option: {exc.option_name} ({hint})", ctx=ctx) from None


@main.command(cls=_TrainCommand)
@click.argument("spec", type=click.Path(dir_okay=False))
@train_flags.click_options
@_report_errors
def train(spec: str, **values) -> None:
    """Train a spec's models as its `train { }` section says; end with verified ONNX graphs.

    \b
    The run folder gets the generated <stem>_train.py (what runs), a copy of the spec, config.json,
    metrics.jsonl, curves.png, checkpoints/, the trained weights (.safetensors) and the ONNX graphs.
    Example:
      dslc train specs/cnn.model --out runs/cnn --epochs 5
    """
    from dslc.training.command import prepare_run, resume_command_set, run_script
    from dslc.training.run_folder import discard_unstarted_run, run_folder_locked

    train_flags.check_combinations(values)
    resume = ["dslc", "train", spec, *train_flags.script_argv(values, command=True)]  # printed when interrupted
    out = Path(values["out"] or Path("runs") / module_name(Path(spec).stem))
    values.update(out=out, data_dir=values["data_dir"] or Path(spec).resolve().parent)
    fresh = not out.exists() or not any(out.iterdir())
    try:
        with run_folder_locked(out), resume_command_set(resume):  # one run at a time writes a run folder
            script = prepare_run(spec, out, list(values["set"]), values["resume"], flags=values)
            click.echo(f"wrote {script} (the training code that runs now)")
            run_script(script, train_flags.script_argv(values), values["nproc"])
    except Exception as exc:
        known = known_torch_error(exc)
        if not isinstance(exc, DslcError) and known is None:
            raise
        # a run that failed before its first checkpoint (a --weights file that does not fit) leaves nothing
        if fresh and discard_unstarted_run(out):
            click.echo(f"removed {out}: the run stopped before it saved anything", err=True)
        if known is not None:
            raise error(None, known) from None
        raise


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option(
    "-o", "--out", "out", default="curves.png", show_default=True, type=click.Path(dir_okay=False), help="The PNG."
)
@click.option("--title", default=None, help="A title over the panels.")
@_report_errors
def plot(runs: tuple[str, ...], out: str, title: str | None) -> None:
    """Draw the curves of one or more run folders on one figure (needs the `plots` extra).

    One panel per loss and metric, a colour per run; train losses solid, validation dashed.

    \b
    Example:
      dslc plot runs/cnn runs/cnn-lr0.01 -o compare.png
    """
    from dslc.training.curves import plot_runs, read_run, run_names

    folders = [Path(r) for r in runs]
    records = [read_run(f) for f in folders]
    names = run_names(folders) if len(folders) > 1 else [""]
    plot_runs(list(zip(names, records)), Path(out), title=title or (str(folders[0]) if len(folders) == 1 else None))
    click.echo(f"wrote {out}")


@main.command()
@click.argument("model_path", type=click.Path(exists=True))
@click.option("--input", "-i", "inputs", multiple=True, metavar="NAME=FILE.npy", help="An input array (repeatable).")
@click.option("--model", "model_name", default=None, help="Which model of a build directory to run.")
@click.option(
    "--variant",
    type=click.Choice(["fp16", "bf16", "int8"]),
    default=None,
    help="The model's fp16, bf16 or int8 graph (dslc build --precision/--quantize), checked against the manifest.",
)
@click.option("--providers", default="auto", help="auto, cpu, cuda or tensorrt.")
@click.option(
    "-o", "--out", "output_dir", default=None, type=click.Path(file_okay=False), help="Save outputs as .npy files here."
)
@click.option("--generate", is_flag=True, help="Generate tokens with a decoder's build (KV cache when it has one).")
@click.option("--prompt", default=None, help="With --generate: token ids, e.g. '1 5 7' (rows of a batch split by ';').")
@click.option("--text", default=None, help="With --generate: a text prompt in the model's vocabulary.")
@click.option("--max-new-tokens", default=20, show_default=True, help="With --generate: tokens to add at most.")
@click.option("--temperature", default=0.0, show_default=True, help="With --generate: 0 is greedy.")
@click.option("--top-k", type=int, default=None, help="With --generate: sample among the k best tokens.")
@click.option("--top-p", type=float, default=None, help="With --generate: sample within the nucleus of this mass.")
@click.option("--seed", type=int, default=None, help="With --generate: seed of the sampling.")
@click.option("--stop", type=int, multiple=True, help="With --generate: a stop token id (repeatable).")
@click.option("--pad-id", type=int, default=None, help="With --generate: written after a row stopped.")
@click.option("--cache/--no-cache", default=None, help="With --generate: require the KV cache, or recompute per token.")
@_report_errors
def run(
    model_path: str,
    inputs: tuple[str, ...],
    model_name: str | None,
    variant: str | None,
    providers: str,
    output_dir: str | None,
    generate: bool,
    cache: bool | None,
    **sampling,
) -> None:
    """Run an exported model (ONNX file or build directory) on .npy inputs, or generate tokens with a decoder.

    \b
    Example:
      dslc run build/cnn --input image=digits.npy -o predictions/
      dslc run build/tg --generate --prompt "1 5 7" --max-new-tokens 32 --temperature 0.8 --top-p 0.9 --seed 0
      dslc run build/transformer --model transformer --generate --prompt 1 --input source=source.npy
    """
    from dslc_runtime.cli import generate_cli, parse_pairs, run_cli

    if generate and variant:
        raise click.UsageError("--variant runs a model's other graph; generation uses its KV-cache graphs")
    if generate:
        sampling["stop"] = list(sampling["stop"])
        generate_cli(
            model_path,
            sampling.pop("prompt"),
            inputs=parse_pairs(inputs),
            output_dir=output_dir,
            cache=cache,
            providers=providers,
            model=model_name,
            **sampling,
        )
        return
    given = [f"--{k.replace('_', '-')}" for k in ("prompt", "text") if sampling[k] is not None]
    if given or cache is not None:
        raise click.UsageError(f"{(given or ['--cache'])[0]} goes with --generate")
    run_cli(model_path, parse_pairs(inputs), output_dir, providers=providers, model=model_name, variant=variant)


@main.command()
@click.argument("model_path", type=click.Path(exists=True))
@click.option("--model", "model_name", default=None, help="Which model of a build directory to time.")
@click.option(
    "--variant",
    type=click.Choice(["fp16", "bf16", "int8"]),
    default=None,
    help="The model's fp16, bf16 or int8 graph (dslc build --precision/--quantize), checked against the manifest.",
)
@click.option("--providers", default="auto", help="Comma-separated providers to compare, e.g. cpu,cuda.")
@click.option("--batch-sizes", default="1,8", help="Comma-separated batch sizes.")
@click.option("--iterations", default=100, show_default=True, help="Timed calls per configuration.")
@_report_errors
def bench(
    model_path: str, model_name: str | None, variant: str | None, providers: str, batch_sizes: str, iterations: int
) -> None:
    """Latency percentiles and throughput per provider, and against torch eager for a build directory.

    \b
    Example:
      dslc bench build/cnn --providers cpu --batch-sizes 1,32
    """
    from dslc.benchmark import bench_model

    sizes = [int(b) for b in batch_sizes.split(",") if b]
    bench_model(Path(model_path), model_name, providers.split(","), sizes, iterations, variant)


if __name__ == "__main__":
    main()
