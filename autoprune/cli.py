"""The ``autoprune`` command. Thin: it parses arguments and calls the library.

Every problem with the user's input reaches the user as one line on stderr and exit code 2
(an :class:`~autoprune.errors.AutopruneError`, or a bad flag); never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from autoprune.errors import AutopruneError

try:  # typer >= 0.29 raises the exceptions of its own vendored click, not click's
    from typer._click import exceptions as cli_errors
except ImportError:  # older typer is built on click itself
    from click import exceptions as cli_errors  # type: ignore[no-redef]

app = typer.Typer(
    name="autoprune",
    help="Search neural-network pruning policies; review the Pareto front in MLflow.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    rich_markup_mode=None,
)
console = Console(highlight=False)
if not console.is_terminal:
    console = Console(highlight=False, width=max(console.width, 160))

SPACE_OPTION = typer.Option(..., "--space", help="Search-space YAML file (see search_spaces/).")
def _check_overrides(name: Optional[str], sampler: Optional[str]) -> None:
    """``--name`` and ``--sampler`` checked here, so their errors name the flag rather than the space file."""
    from autoprune.samplers import SAMPLERS
    from autoprune.space import STUDY_NAME

    if name is not None and not STUDY_NAME.match(name):
        raise AutopruneError(f"--name {name!r}: not a valid study name; use up to 100 letters, digits, '.', '_' "
                             "and '-', starting with a letter or digit (it becomes a folder under studies/)")
    if sampler is not None and sampler not in SAMPLERS:
        raise AutopruneError(f"--sampler {sampler}: {SAMPLERS.unknown_message(sampler)}")


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
        table.add_column(column, no_wrap=column in ("layer", "pattern"))
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
    latency = spec.latency
    console.print(f"latency: {latency.runtime}, batch {latency.batch_size}, {latency.threads} thread(s), "
                  f"median of {latency.repeats} after {latency.warmup} warm-up")
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
    from autoprune.models import prunable_layers
    from autoprune.paths import study_paths
    from autoprune.policy import load_policy
    from autoprune.space import load_space
    from autoprune.trial import TrialFailed, run_trial

    spec = load_space(space)
    chosen = load_policy(policy)
    torch.set_num_threads(threads)
    setup = build_setup(spec)
    chosen.check_complete(source=str(policy))  # before the dense model is trained for nothing
    chosen.check_layers(list(prunable_layers(setup.model)), source=str(policy))
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


@app.command()
def search(
    space: Path = SPACE_OPTION,
    trials: Optional[int] = typer.Option(None, "--trials", min=1, max=100_000, help="Finished trials wanted (overrides study.trials)."),
    name: Optional[str] = typer.Option(None, "--name", help="Study name (overrides study.name)."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="tpe | nsga2 | gp | random | qmc (overrides study.sampler)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the sampler and the trials (overrides study.seed)."),
    gpus: float = typer.Option(0, "--gpus", help="GPUs to use; 0 runs CPU trials."),
    gpus_per_trial: float = typer.Option(1, "--gpus-per-trial", help="GPUs per trial (fractions allowed)."),
    cpus_per_trial: float = typer.Option(1, "--cpus-per-trial", help="CPU cores (and torch threads) per trial."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", min=1, help="Trials at once (default: from resources)."),
    address: Optional[str] = typer.Option(None, "--address", help="Attach to a Ray cluster: auto or ray://HOST:PORT."),
    resume: bool = typer.Option(False, "--resume", help="Continue an existing study (the same command also resumes)."),
    retries: int = typer.Option(1, "--retries", min=0, help="Restarts of a trial whose worker dies."),
    max_failures: Optional[int] = typer.Option(None, "--max-failures", min=1, help="Stop after this many failed trials (default: the trial count)."),
    seed_baselines: bool = typer.Option(False, "--seed-baselines", help="Start from uniform and global magnitude policies."),
    studies: Optional[Path] = typer.Option(None, "--studies", help="Studies folder (default ./studies or $AUTOPRUNE_STUDIES)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite:///<studies>/mlflow.db)."),
    no_tracking: bool = typer.Option(False, "--no-tracking", help="Do not log to MLflow (a later run catches up)."),
    no_retime: bool = typer.Option(False, "--no-retime", help="Do not re-time the Pareto candidates alone at the end."),
) -> None:
    """Search pruning policies: run the study of a space file on Ray Tune with an Optuna sampler."""
    from autoprune.search import SearchOptions, run_search
    from autoprune.space import load_space

    _check_overrides(name, sampler)
    spec = load_space(space)
    options = SearchOptions(
        studies=studies, trials=trials, name=name, sampler=sampler, seed=seed, gpus=gpus,
        gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial, concurrency=concurrency,
        address=address, resume=resume, retries=retries, max_failures=max_failures,
        seed_baselines=seed_baselines, quiet=quiet, tracking=not no_tracking, tracking_uri=tracking_uri,
        retime=not no_retime,
    )
    log = (lambda message: None) if quiet else (lambda message: console.print(message, markup=False))
    outcome = run_search(spec, options, log=log)
    study = outcome.paths.name
    resume_command = f"autoprune search --space {space} --resume" + (f" --name {name}" if name else "")
    if outcome.interrupted:
        print(f"interrupted: {outcome.finished} trials finished; resume with: {resume_command}", file=sys.stderr)
        raise typer.Exit(130)
    if not quiet:
        _print_front(study, studies, sort=None)
        console.print(
            f"{outcome.finished} trials finished, {outcome.failed} failed; front: {outcome.front_size} trials\n"
            f"results: {outcome.paths.trials_csv}, {outcome.paths.pareto_csv}\n"
            f"next: autoprune pareto --study {study}  |  autoprune ui --study {study}  |  "
            f"autoprune export --study {study}",
            markup=False,
        )


def _csv_list(flag: str, text: Optional[str], convert: type = str) -> Optional[list]:
    """``a,b,c`` → a list (``None`` stays ``None``); a bad item is a one-line error naming ``flag``."""
    if text is None:
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise AutopruneError(f"{flag} {text!r}: give a comma-separated list")
    try:
        return [convert(item) for item in items]
    except ValueError:
        raise AutopruneError(f"{flag} {text!r}: expected comma-separated numbers, e.g. 0.5,0.9") from None


@app.command()
def baselines(
    space: Path = SPACE_OPTION,
    sparsities: Optional[str] = typer.Option(None, "--sparsities", help="Overall sparsities (default 0.5,0.8,0.9,0.95,0.98)."),
    methods: Optional[str] = typer.Option(None, "--methods", help="uniform,global,lamp,erk,random (default: all)."),
    granularity: Optional[str] = typer.Option(None, "--granularity", help="unstructured | channel (default: the space's first)."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="Schedule shape (default one_shot)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Prune steps of a multi-step schedule (default: the space's most)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Finetune epochs (default: the most the space allows)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Finetune learning rate (default: the middle of the space's range)."),
    threads: int = typer.Option(1, "--threads", min=1, help="Torch threads."),
    force: bool = typer.Option(False, "--force", help="Run points again even if baselines.csv has them."),
    studies: Optional[Path] = typer.Option(None, "--studies", help="Studies folder (default ./studies or $AUTOPRUNE_STUDIES)."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow store (default as for search)."),
    no_tracking: bool = typer.Option(False, "--no-tracking", help="Do not log to MLflow (a later run catches up)."),
) -> None:
    """Run the no-search baselines (magnitude uniform/global, LAMP, ERK, random) at the study's budget."""
    from autoprune.baselines import baseline_settings, run_baselines
    from autoprune.space import load_space

    spec = load_space(space)
    settings = baseline_settings(
        spec, methods=_csv_list("--methods", methods), sparsities=_csv_list("--sparsities", sparsities, float),
        granularity=granularity, schedule=schedule, steps=steps, epochs=epochs, lr=lr,
    )
    outcome = run_baselines(spec, settings, studies=studies, threads=threads, tracking=not no_tracking,
                            tracking_uri=tracking_uri, force=force,
                            log=lambda message: console.print(message, markup=False))
    if outcome.interrupted:
        print(f"interrupted: {outcome.ran} points written to {outcome.paths.baselines_csv}; "
              f"the same command runs the rest", file=sys.stderr)
        raise typer.Exit(130)
    table = Table(title=f"baselines of {spec.study.name} ({settings.budget()})", title_justify="left")
    columns = ["method", "target_sparsity", "accuracy", "accuracy_drop", "sparsity", *spec.objectives]
    columns = list(dict.fromkeys(columns))
    for column in columns:
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in outcome.frame.to_dict("records"):
        if row["state"] == "finished":
            cells = [f"{float(row[c]):.4g}" for c in columns[2:]]
        else:
            cells = [f"failed: {row['error']}"] + [""] * (len(columns) - 3)
        table.add_row(row["method"], f"{float(row['target_sparsity']):g}", *cells)
    console.print(table)
    console.print(f"{outcome.ran} run, {outcome.skipped} already done, {outcome.failed} failed; "
                  f"results: {outcome.paths.baselines_csv}" + (f"; plots: {outcome.plots[0]}" if outcome.plots else ""),
                  markup=False)


@app.command()
def pareto(
    study: str = typer.Option(..., "--study", help="Study name (a folder under the studies folder)."),
    sort: Optional[str] = typer.Option(None, "--sort", help="Metric to sort the front by (default: the first objective)."),
    as_csv: bool = typer.Option(False, "--csv", help="Print the front as CSV (for scripts)."),
    studies: Optional[Path] = typer.Option(None, "--studies", help="Studies folder (default ./studies or $AUTOPRUNE_STUDIES)."),
) -> None:
    """Print the Pareto front of a study (feasible, non-dominated trials)."""
    if as_csv:
        from autoprune.report import load_front

        front, _ = load_front(study, studies, sort=sort)
        sys.stdout.write(front.to_csv(index=False))
        return
    _print_front(study, studies, sort=sort)


@app.command()
def ui(
    studies: Optional[Path] = typer.Option(None, "--studies", help="Studies folder (default ./studies or $AUTOPRUNE_STUDIES)."),
    study: Optional[str] = typer.Option(None, "--study", help="Print the address of this study's parent run."),
    port: int = typer.Option(5000, "--port", min=1, max=65535, help="Port of the MLflow UI."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (default: this machine only)."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow store (default as for search)."),
) -> None:
    """Start the MLflow UI on the studies' tracking store; Ctrl-C stops it."""
    from autoprune.ui import run_ui

    run_ui(studies=studies, study=study, host=host, port=port, tracking_uri=tracking_uri,
           log=lambda message: print(message, flush=True))


STUDY_OPTION = typer.Option(..., "--study", help="Study name (a folder under the studies folder).")
STUDIES_OPTION = typer.Option(None, "--studies", help="Studies folder (default ./studies or $AUTOPRUNE_STUDIES).")


@app.command()
def retime(
    study: str = STUDY_OPTION,
    studies: Optional[Path] = STUDIES_OPTION,
    force: bool = typer.Option(False, "--force", help="Also re-time candidates that already have an isolated latency."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow store (default as for search)."),
    no_tracking: bool = typer.Option(False, "--no-tracking", help="Do not update the trials' MLflow runs."),
) -> None:
    """Re-time every Pareto candidate alone, one after another: latency_ms_isolated."""
    from autoprune.retime import retime_study

    outcome = retime_study(study, studies, force=force, tracking=not no_tracking,
                           tracking_uri=tracking_uri,
                           log=lambda message: console.print(message, markup=False))
    if not outcome.timed:
        console.print("retime: every Pareto candidate already has latency_ms_isolated (use --force to re-time)")
    _print_front(study, studies, sort=None)


@app.command()
def export(
    study: str = STUDY_OPTION,
    out: Optional[Path] = typer.Option(None, "--out", help="Folder to write (default studies/<study>/export/trial-<N>)."),
    trial_number: Optional[int] = typer.Option(None, "--trial", help="Export this trial (finished and feasible)."),
    pick: Optional[str] = typer.Option(None, "--pick", help='Choose among the Pareto points, e.g. "accuracy_drop<=0.01 and sparsity>=0.8".'),
    studies: Optional[Path] = STUDIES_OPTION,
    no_register: bool = typer.Option(False, "--no-register", help="Do not register the model in the MLflow Model Registry."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow store (default as for search)."),
) -> None:
    """Export one trial: policy.yaml, weights.pt, model.onnx, metrics.json, MODEL_CARD.md; register it."""
    from autoprune.export import export_study

    export_study(study, out=out, trial=trial_number, pick=pick, studies=studies, register=not no_register,
                 tracking_uri=tracking_uri, log=lambda message: console.print(message, markup=False))


@app.command()
def apply(
    policy: Path = typer.Option(..., "--policy", help="An exported policy.yaml."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Dense state dict (default: the one the policy was found on)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Finetuning epochs instead of the policy's."),
    out: Path = typer.Option(..., "--out", help="Folder to write."),
) -> None:
    """Apply an exported policy to a dense checkpoint and write the same artifacts as export."""
    from autoprune.apply import apply_file

    apply_file(policy, out, checkpoint=checkpoint, epochs=epochs, log=lambda message: console.print(message, markup=False))


def _print_front(study: str, studies: Optional[Path], sort: Optional[str]) -> None:
    from autoprune.report import front_table, load_front

    front, objectives = load_front(study, studies, sort=sort)
    console.print(front_table(front, objectives, title=f"Pareto front of {study} ({len(front)} trials)"))


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point of the console script: one-line errors and exit code 2 on bad input."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="autoprune", standalone_mode=False)
    except AutopruneError as error:
        print(f"autoprune: error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except cli_errors.NoArgsIsHelpError as error:
        print(error.ctx.get_help() if error.ctx else str(error))
        sys.exit(0)
    except cli_errors.UsageError as error:
        where = f"autoprune {error.ctx.info_name}" if error.ctx and error.ctx.info_name != "autoprune" else "autoprune"
        hint = " (see --help)"
        print(f"{where}: error: {' '.join(error.format_message().split())}{hint}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("autoprune: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
