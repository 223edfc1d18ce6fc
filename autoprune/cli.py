"""The ``autoprune`` command. Thin: it parses arguments and calls the library.

Every problem with the user's input reaches the user as one line on stderr and exit code 2
(an :class:`~autoprune.errors.AutopruneError`, or a bad flag); never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from rich.table import Table

from autoprune.errors import AutopruneError

app = typer.Typer(
    name="autoprune",
    help="Search neural-network pruning policies; review the Pareto front in MLflow.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    rich_markup_mode=None,
)
console = Console(highlight=False)

SPACE_OPTION = typer.Option(..., "--space", help="Search-space YAML file (see search_spaces/).")


@app.command()
def validate(space: Path = SPACE_OPTION) -> None:
    """Check a space file against its model and data; print the layers and search dimensions."""
    from autoprune.context import build_setup
    from autoprune.space import load_space
    from autoprune.suggest import search_dimensions

    spec = load_space(space)
    setup = build_setup(spec)
    data = setup.data
    console.print(f"[bold]{space}[/]: study {spec.study.name!r}, {spec.study.trials} trials, sampler {spec.study.sampler}")
    console.print(f"model: {spec.model.name} {dict(spec.model.args) or ''}".rstrip())
    console.print(
        f"data: {data.name} input {tuple(data.input_shape)}, {data.num_classes} classes, "
        f"train {len(data.train_y)} / val {len(data.val_y)} / test {len(data.test_y)}"
    )
    table = Table(title="prunable layers", title_justify="left")
    for column in ("layer", "kind", "weight shape", "params", "sparsity range", "pattern"):
        table.add_column(column)
    for layer in setup.layers:
        if layer.excluded:
            rng, pattern = "excluded", ""
        elif layer.sparsity is not None:
            rng, pattern = layer.sparsity.describe(), layer.pattern or ""
        else:
            rng, pattern = f"target_sparsity {spec.space.target_sparsity.describe()}", ""
        kind = f"{layer.kind}, output" if layer.name == setup.output_layer else layer.kind
        table.add_row(layer.name, kind, "x".join(map(str, layer.shape)), f"{layer.params:,}", rng, pattern)
    console.print(table)
    console.print("the output layer keeps all its units under channel pruning")
    excluded = [layer.name for layer in setup.layers if layer.excluded]
    console.print(f"excluded layers: {', '.join(excluded) if excluded else 'none'}")
    dims = search_dimensions(spec.space, setup.layers)
    console.print(f"search dimensions: {len(dims)}")
    for name, description in dims.items():
        console.print(f"  {name}: {description}")
    objectives = ", ".join(f"{k} ({v})" for k, v in spec.objectives.items())
    console.print(f"objectives: {objectives}")
    console.print("[green]ok[/]")


@app.command()
def trial(
    space: Path = SPACE_OPTION,
    policy: Path = typer.Option(..., "--policy", help="Policy YAML (a bare policy or an exported policy.yaml)."),
    studies: Optional[Path] = typer.Option(None, "--studies", help="Studies folder (default ./studies or $AUTOPRUNE_STUDIES)."),
    threads: int = typer.Option(1, "--threads", min=1, help="Torch threads for the trial."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON only."),
) -> None:
    """Run one policy end to end (the dense model is trained once and cached) and print its metrics."""
    import json

    import torch

    from autoprune.context import build_setup, trial_context
    from autoprune.dense import prepare_dense
    from autoprune.paths import study_paths
    from autoprune.policy import load_policy
    from autoprune.space import load_space
    from autoprune.trial import TrialFailed, run_trial

    spec = load_space(space)
    chosen = load_policy(policy)
    torch.set_num_threads(threads)
    setup = build_setup(spec)
    log = (lambda message: None) if as_json else (lambda message: console.print(message))
    dense = prepare_dense(setup, study_paths(spec.study.name, studies), log=log)
    context = trial_context(setup, dense)

    def show_step(record: dict) -> None:
        log(
            f"step {record['step']}: sparsity {record['sparsity']:.4f} "
            f"(target {record.get('target', float('nan')):.4f}), accuracy {record['accuracy']:.4f}"
        )

    log(f"policy: {chosen.summary()}")
    try:
        result = run_trial(chosen, context, threads=threads, on_step=None if as_json else show_step)
    except TrialFailed as error:
        raise AutopruneError(f"{policy}: trial failed: {error}") from None
    if as_json:
        print(json.dumps({"metrics": result.metrics, "layer_sparsity": result.layer_sparsity,
                          "stop_reason": result.stop_reason}, indent=2))
        return
    table = Table(title="metrics", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.0f}")
    console.print(table)
    if result.stop_reason:
        console.print(f"adaptive schedule stopped: {result.stop_reason}")


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point of the console script: one-line errors and exit code 2 on bad input."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="autoprune", standalone_mode=False)
    except AutopruneError as error:
        print(f"autoprune: error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except click.exceptions.NoArgsIsHelpError as error:
        click.echo(error.ctx.get_help() if error.ctx else str(error))
        sys.exit(0)
    except click.UsageError as error:
        where = f"autoprune {error.ctx.info_name}" if error.ctx and error.ctx.info_name != "autoprune" else "autoprune"
        hint = " (see --help)"
        print(f"{where}: error: {' '.join(error.format_message().split())}{hint}", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.Abort:
        print("autoprune: interrupted", file=sys.stderr)
        sys.exit(130)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
