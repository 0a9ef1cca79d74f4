"""The `dslc` command line. Errors are printed as located diagnostics, never as tracebacks."""

from __future__ import annotations

import functools
import sys
import traceback
from pathlib import Path

import click

from dslc import __version__
from dslc.errors import DslcError


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
        except (click.exceptions.Exit, click.ClickException, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:  # an internal error: say so, show the traceback only on request
            if debug:
                traceback.print_exc()
            click.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
            if not debug:
                click.echo("this is a bug in dslc; run with --debug for the traceback", err=True)
            sys.exit(2)

    return wrapper


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
    "--set", "overrides", multiple=True, metavar="NAME=VALUE", help="Override a constant of the spec (repeatable)."
)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--shapes", is_flag=True, help="Print every layer's output shape and parameter count.")
@_set_option
@_report_errors
def check(files: tuple[str, ...], shapes: bool, overrides: tuple[str, ...]) -> None:
    """Parse and shape-check spec files (no torch needed). Exit 0 when clean, 1 on errors.

    \b
    Example:
      dslc check specs/*.model
      dslc check specs/mlp.model --shapes --set hidden=16
    """
    from dslc.checker import check_file

    failures: list[DslcError] = []
    for path in files:
        try:
            program = check_file(path, list(overrides))
        except DslcError as exc:
            failures.append(exc)
            continue
        params = sum(m.param_count for m in program.exported)
        names = ", ".join(m.spec_name for m in program.exported)
        click.echo(f"{path}: ok ({names}; {params:,} parameters)")
        if shapes:
            _print_shapes(program)
    if failures:
        raise DslcError([d for f in failures for d in f.diagnostics], {k: v for f in failures for k, v in f.sources.items()})


def _print_shapes(program) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    for module in program.modules:
        table = Table(title=escape(f"{module.kind} {module.signature}"), title_justify="left")
        for column in ("line", "layer", "op", "output", "params"):
            table.add_column(column, justify="right" if column in ("line", "params") else "left")
        for rec in module.records:
            table.add_row(str(rec.loc.line), escape(rec.module), escape(rec.what), escape(rec.output), f"{rec.params:,}")
        table.add_row("", "", "total", "", f"{module.param_count:,}", style="bold")
        console.print(table)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_dir", default=None, type=click.Path(file_okay=False), help="Output directory (default: build/<stem>).")
@click.option("--no-onnx", is_flag=True, help="Write only the PyTorch code.")
@click.option("--no-verify", is_flag=True, help="Skip running the ONNX graph against PyTorch.")
@_set_option
@_report_errors
def build(spec: str, out_dir: str | None, no_onnx: bool, no_verify: bool, overrides: tuple[str, ...]) -> None:
    """Compile a spec to PyTorch code and verified ONNX graphs.

    \b
    Example:
      dslc build specs/cnn.model -o build/cnn
    """
    from dslc.build import build as run_build

    out = Path(out_dir or Path("build") / Path(spec).stem)
    result = run_build(spec, out, list(overrides), export_onnx=not no_onnx, verify_onnx=not no_verify)
    click.echo(f"wrote {result.python_path}")
    for report in result.models:
        line = f"wrote {out / report.onnx}: {report.nodes} nodes, {report.params:,} parameters"
        if report.verified:
            sizes = "; ".join(", ".join(f"{k}={v}" for k, v in run.items()) or "fixed shapes" for run in report.runs)
            line += f"; onnxruntime matches PyTorch (max abs diff {report.max_abs_diff:.1e} at {sizes})"
        else:
            line += "; not verified (--no-verify)"
        click.echo(line)


if __name__ == "__main__":
    main()
