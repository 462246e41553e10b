"""``lrfast demo``: which learning rate? The range test against a grid, on real data.

For SGD with momentum 0.9 and for Adam, on the NumPy MLP of
:mod:`lrfast.examples.digits_mlp` (scikit-learn's digits, nothing downloaded):

1. a learning-rate range test (:func:`lrfast.find_lr`) per seed, on the very
   model that is then trained at its suggestion (the test restores it);
2. training for the same budget at every rate of a half-decade grid
   (1e-4 ... 1), at the suggested rate, and with schedules whose peak is the
   suggestion: step decay, cosine, one-cycle, reduce-on-plateau;
3. in Adam's table, the optimizers that set their own step size, for the
   same budget: schedule-free AdamW at its default rate and at Adam's
   suggestion, and Prodigy at ``lr=1`` (no schedule for any of them);
4. a table per optimizer (validation accuracy and loss as mean +- std over
   seeds, steps until the validation accuracy first reaches 95%, wall time
   per run, train-minus-validation accuracy gap) and PNGs of the range tests
   and of the validation-loss curves.

Everything printed is measured by the run. Needs ``pip install "lrfast[demo]"``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import cli_args, run_record

# Half-decades from 1e-4 to 1.
GRID = tuple(10 ** (k / 2) for k in range(-8, 1))
OPTIMIZERS = {"sgd": "SGD with momentum 0.9", "adam": "Adam"}
# The rates the packages of schedule-free AdamW and Prodigy default to.
SCHEDULEFREE_DEFAULT_LR = 0.0025
PRODIGY_LR = 1.0
TARGET_ACCURACY = 0.95
DEFAULT_EPOCHS = 20
BATCH_SIZE = 64
# Validation every EVAL_EVERY steps (about half an epoch): the curves' points,
# the resolution of "steps to 95%", and what reduce-on-plateau watches.
EVAL_EVERY = 10
QUICK_STEPS = 30
# The loss curves' y axis ends at this multiple of the loss before training.
CLIP_ABOVE_START = 2.0


@dataclass(frozen=True)
class Row:
    """One line of a table: a rate or schedule trained once per seed."""

    label: str
    group: str  # "fixed", "suggested", "schedule" or "lr-free"
    runs: list[Any]  # a digits_mlp.TrainResult per seed
    rate: float | None = None  # the fixed rate, for grid rows

    def mean_std(self, name: str) -> tuple[float, float]:
        import numpy as np

        values = np.array([getattr(run, name) for run in self.runs], dtype=float)
        return float(values.mean()), float(values.std())


@dataclass(frozen=True)
class Plan:
    """How to train one row: ``make(seed_index)`` returns the (schedule,
    plateau) of that seed's run, the schedules built on that seed's suggestion;
    ``trains`` is the optimizer when it is not the table's."""

    label: str
    group: str
    rate: float | None
    make: Any
    trains: str | None = None


def lr_free_plans(suggested: list[float]) -> list[Plan]:
    """The rows of the optimizers that set their own step size (Adam's table)."""
    from .schedules import constant

    return [
        Plan(f"schedule-free AdamW, lr {SCHEDULEFREE_DEFAULT_LR:g}", "lr-free", None,
             lambda i: (constant(SCHEDULEFREE_DEFAULT_LR), None), "schedulefree_adamw"),
        Plan(f"schedule-free AdamW, suggested lr {_geomean(suggested):.2g}", "lr-free", None,
             lambda i: (constant(suggested[i]), None), "schedulefree_adamw"),
        Plan(f"Prodigy, lr {PRODIGY_LR:g}", "lr-free", None,
             lambda i: (constant(PRODIGY_LR), None), "prodigy"),
    ]


def _plans(suggested: list[float], steps: int, kind: str) -> list[Plan]:
    """Every row of ``kind``'s table."""
    from .schedules import ReduceLROnPlateau, constant, cosine_decay, one_cycle, step_decay

    shown = _geomean(suggested)
    plans = [Plan(f"lr {lr:.0e}", "fixed", lr, lambda i, lr=lr: (constant(lr), None)) for lr in GRID]
    plans += [
        Plan(f"suggested lr {shown:.2g}", "suggested", None, lambda i: (constant(suggested[i]), None)),
        Plan("step decay, /10 every third", "schedule", None,
             lambda i: (step_decay(suggested[i], step_size=max(1, steps // 3), gamma=0.1), None)),
        Plan("cosine decay to 0", "schedule", None, lambda i: (cosine_decay(suggested[i], steps), None)),
        # Smith's one-cycle: warm up to the peak over 30% of the run while
        # momentum (Adam's beta1) falls from 0.95 to 0.85, then anneal.
        Plan("one-cycle, peak = suggestion", "schedule", None,
             lambda i: (one_cycle(suggested[i], max(2, steps)), None)),
        # watched every EVAL_EVERY steps: patience 3 is 40 steps, ~2 epochs
        Plan("reduce on plateau, /10", "schedule", None,
             lambda i: (constant(suggested[i]), ReduceLROnPlateau(factor=0.1, patience=3))),
    ]
    return plans + (lr_free_plans(suggested) if kind == "adam" else [])


def rows_per_seed(kind: str) -> int:
    """How many training runs ``compare`` makes per seed for ``kind``."""
    return len(_plans([1.0], 1, kind))


def compare(data: Any, kind: str, seeds: list[int], steps: int, *, schedules: bool = True,
            progress: Any = None) -> tuple[list, list[Row], bool]:
    """Range tests, then every row of the table for optimizer ``kind``.

    Returns the range-test results (one per seed), the rows, and whether
    every range test left its model exactly as it found it.
    """
    import numpy as np

    from .examples.digits_mlp import MLP, range_test, train

    finders, suggested, models, restored = [], [], [], True
    for seed in seeds:
        model = MLP(seed=seed)
        finders.append(range_test(data, kind, seed=seed, batch_size=BATCH_SIZE, model=model))
        suggested.append(finders[-1].suggest())
        fresh = MLP(seed=seed)
        restored &= all(np.array_equal(a, b) for a, b in zip(model.params, fresh.params))
        models.append(model)

    rows = []
    for plan in _plans(suggested, steps, kind):
        if plan.group in ("schedule", "lr-free") and not schedules:
            continue
        runs = []
        for i, seed in enumerate(seeds):
            schedule, plateau = plan.make(i)
            # the suggested rate trains the model its range test ran on
            tested = models[i] if plan.group == "suggested" else None
            runs.append(train(data, plan.trains or kind, schedule, steps, seed=seed,
                              batch_size=BATCH_SIZE, eval_every=EVAL_EVERY, plateau=plateau,
                              target_accuracy=TARGET_ACCURACY, model=tested))
            if progress is not None:
                progress.update()
        rows.append(Row(plan.label, plan.group, runs, plan.rate))
    return finders, rows, restored


def best_fixed(rows: list[Row]) -> Row:
    """The grid row with the lowest mean final validation loss."""
    fixed = [row for row in rows if row.group == "fixed" and math.isfinite(row.mean_std("val_loss")[0])]
    return min(fixed, key=lambda row: row.mean_std("val_loss")[0])


def format_table(rows: list[Row]) -> str:
    width = max(len(row.label) for row in rows) + 2  # the label and the best-rate mark
    header = (f"{'rate / schedule':<{width}} {'val acc %':>13} {'val loss':>15} "
              f"{'steps to ' + format(TARGET_ACCURACY, '.0%'):>13} {'ms/run':>7} {'gap pp':>7}")
    lines = [header, "-" * len(header)]
    best = best_fixed(rows)
    for i, row in enumerate(rows):
        if i > 0 and row.group != rows[i - 1].group:
            lines.append("")
        acc, acc_sd = row.mean_std("val_accuracy")
        loss, loss_sd = row.mean_std("val_loss")
        seconds, _ = row.mean_std("seconds")
        gap = 100 * (row.mean_std("train_accuracy")[0] - acc)
        reached = [run.steps_to_target for run in row.runs if run.steps_to_target is not None]
        if not reached:
            to_target = "—"
        elif len(reached) < len(row.runs):
            to_target = f"{sum(reached) / len(reached):.0f} ({len(reached)}/{len(row.runs)})"
        else:
            to_target = f"{sum(reached) / len(reached):.0f}"
        diverged = sum(run.diverged for run in row.runs)
        loss_text = f"{loss:.3f} ± {loss_sd:.3f}" if math.isfinite(loss) else f"diverged {diverged}/{len(row.runs)}"
        mark = " *" if row is best else ""
        lines.append(f"{row.label + mark:<{width}} {100 * acc:6.1f} ± {100 * acc_sd:4.1f} {loss_text:>15} "
                     f"{to_target:>13} {1000 * seconds:7.0f} {gap:7.1f}")
    lines.append("* best fixed rate of the grid (lowest mean validation loss)")
    return "\n".join(lines)


def verdict(rows: list[Row]) -> str:
    """How the suggestion, and each optimizer that sets its own step size,
    compares with the best rate of the grid; which of them diverged."""
    best = best_fixed(rows)
    best_loss = best.mean_std("val_loss")[0]
    lines = []
    for row in rows:
        if row.group not in ("suggested", "lr-free"):
            continue
        name = "suggested rate" if row.group == "suggested" else row.label
        diverged = sum(run.diverged for run in row.runs)
        if diverged:
            lines.append(f"{name}: DIVERGED on digits in {diverged} of {len(row.runs)} seeds")
            continue
        loss, acc = row.mean_std("val_loss")[0], row.mean_std("val_accuracy")[0]
        lines.append(f"{name}: validation loss {loss:.3f} = {loss / best_loss:.2f} x that of the "
                     f"best grid rate {best.rate:.0e} ({best_loss:.3f}), accuracy {100 * acc:.1f}%")
    return "\n".join(lines)


def summary(finders: list, rows: list[Row]) -> dict[str, Any]:
    """A table as data: the suggestion of each seed's range test, the best grid
    row's label, and per row its validation loss and accuracy (mean and std over
    seeds) and how many seeds diverged."""
    def stats(row: Row) -> dict[str, Any]:
        (loss, loss_sd), (acc, acc_sd) = row.mean_std("val_loss"), row.mean_std("val_accuracy")
        return dict(label=row.label, group=row.group, rate=row.rate, val_loss=loss,
                    val_loss_std=loss_sd, val_accuracy=acc, val_accuracy_std=acc_sd,
                    diverged=sum(run.diverged for run in row.runs))

    return dict(suggested=[finder.suggest() for finder in finders],
                best=best_fixed(rows).label, rows=[stats(row) for row in rows])


def plot_range_tests(finders: list, title: str, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    finders[0].plot(ax=fig.add_subplot(), title=f"{title}: range test (seed 0)")
    fig.savefig(path, dpi=120)


def plot_curves(rows: list[Row], title: str, path: Path) -> Any:
    """Validation loss against step, mean over seeds: the grid on the left,
    the schedules on the right, the suggested constant rate on both, legends
    below the axes. The y axis stops at CLIP_ABOVE_START times the loss at
    step 0 (diverging rates would stretch it over decades), and the figure
    says so. Returns the figure."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 6.4), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, sharey=True)
    fixed = [row for row in rows if row.group == "fixed"]
    colors = colormaps["viridis"](np.linspace(0, 0.95, len(fixed)))
    schedule_colors = iter(["tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink",
                            "tab:cyan", "tab:olive", "tab:gray"])
    lowest, starts = math.inf, []
    for row in rows:
        steps, mean = _mean_curve(row)
        lowest = min(lowest, float(np.nanmin(mean)))
        starts.append(mean[0])
        diverged = sum(run.diverged for run in row.runs)
        label = row.label + (f" (diverged {diverged}/{len(row.runs)})" if diverged else "")
        if row.group == "fixed":
            left.plot(steps, mean, color=colors[fixed.index(row)], lw=1.2, label=label)
        elif row.group == "suggested":
            for ax in (left, right):
                ax.plot(steps, mean, color="tab:red", lw=2.5, label=label)
        else:
            right.plot(steps, mean, color=next(schedule_colors), lw=1.5, label=label)
    left.set_title(f"{title}: fixed rates")
    right.set_title(f"{title}: schedules from the suggested rate"
                    + (", and no schedule" if any(row.group == "lr-free" for row in rows) else ""))
    for ax in (left, right):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12),
                  frameon=False)
    top = CLIP_ABOVE_START * float(np.nanmedian(starts))
    left.set_ylim(0.9 * lowest, top)
    left.set_ylabel(f"validation loss (mean of {len(rows[0].runs)} seeds)")
    fig.suptitle(f"y axis clipped at {top:.2g} ({CLIP_ABOVE_START:g} x the loss at step 0): "
                 "a curve that leaves the top rose above it; one that ends early diverged "
                 "(a NaN or infinite loss in a seed)", fontsize=9)
    fig.savefig(path, dpi=110)
    return fig


def _mean_curve(row: Row) -> tuple[Any, Any]:
    """Steps and mean validation loss; runs that diverged count as inf after."""
    import numpy as np

    longest = max(row.runs, key=lambda run: len(run.eval_steps)).eval_steps
    curves = np.full((len(row.runs), len(longest)), np.inf)
    for i, run in enumerate(row.runs):
        curves[i, :len(run.val_losses)] = run.val_losses
    with np.errstate(invalid="ignore"):
        return longest, np.where(np.isfinite(curves), curves, np.nan).mean(axis=0)


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="which learning rate? the range test against a grid of rates, measured on digits",
        description=(
            "Run the learning-rate range test for SGD with momentum and Adam on a small "
            "NumPy MLP (scikit-learn's digits), then train at a half-decade grid of rates, "
            "at the suggested rate and with schedules, beside schedule-free AdamW and "
            "Prodigy, and print what each reached. "
            'Needs: pip install "lrfast[demo]".'
        ),
    )
    parser.add_argument("--seeds", type=cli_args.positive_int, default=3, metavar="N",
                        help="seeds per setting (default 3)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=cli_args.positive_int, metavar="E",
                        help=f"training budget in epochs (default {DEFAULT_EPOCHS})")
    budget.add_argument("--steps", type=cli_args.positive_int, metavar="N",
                        help="training budget in steps")
    parser.add_argument("--out", default="lrfast-demo", metavar="DIR",
                        help="directory for the PNGs, made if missing (default ./lrfast-demo)")
    parser.add_argument("--no-plots", action="store_true", help="do not draw the PNGs")
    parser.add_argument("--quick", action="store_true",
                        help=f"a tiny budget ({QUICK_STEPS} steps) to check that everything runs")
    parser.add_argument("--json", metavar="PATH", type=cli_args.output_file,
                        help="also write the tables as JSON (means and stds over seeds)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import sklearn  # noqa: F401
        import tqdm
        from threadpoolctl import threadpool_limits
        if not args.no_plots:
            import matplotlib  # noqa: F401
    except ImportError as exc:
        return cli_args.error("lrfast demo", f'needs {exc.name}: pip install "lrfast[demo]"')

    from .examples.digits_mlp import load_digits
    from .finder import DEFAULT_SUGGESTION

    data = load_digits()
    steps_per_epoch = len(data.y_train) // BATCH_SIZE
    if args.quick:
        steps = QUICK_STEPS
    elif args.steps is not None:
        steps = args.steps
    else:
        steps = (args.epochs or DEFAULT_EPOCHS) * steps_per_epoch
    seeds = list(range(args.seeds))
    out = Path(args.out)
    if not args.no_plots:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return cli_args.error("lrfast demo", f"cannot make the folder {str(out)!r}: {exc.strerror}")

    print(f"digits: {len(data.y_train)} training / {len(data.y_val)} validation images; "
          f"MLP 64-64-64-10; batches of {BATCH_SIZE}; {steps} steps "
          f"({steps / steps_per_epoch:.3g} epochs); seeds {seeds}")
    runs = len(seeds) * sum(rows_per_seed(kind) for kind in OPTIMIZERS)
    info = run_record.machine()
    figures: list[Path] = []
    tables = {}
    started = time.perf_counter()
    # The matrices are tiny: BLAS threads only add synchronisation, and on a
    # busy 2-core machine they made a 539 x 64 product 10-100 times slower.
    with threadpool_limits(limits=1, user_api="blas"), \
            tqdm.tqdm(total=runs, desc="training", unit="run", file=sys.stderr,
                      disable=not sys.stderr.isatty()) as bar:  # no bars in logs
        for kind, title in OPTIMIZERS.items():
            finders, rows, restored = compare(data, kind, seeds, steps, progress=bar)
            rates = ", ".join(f"{finder.suggest():.2g}" for finder in finders)
            bar.clear()
            print(f"\n{title}: range test suggests {rates} (method '{DEFAULT_SUGGESTION}', one per seed;"
                  f" model restored after the test: {'yes' if restored else 'NO'})")
            print(format_table(rows))
            print(verdict(rows))
            tables[kind] = summary(finders, rows)
            if not args.no_plots:
                figures += [out / f"range_test_{kind}.png", out / f"curves_{kind}.png"]
                plot_range_tests(finders, title, figures[-2])
                plot_curves(rows, title, figures[-1])
    print(f"\ntotal wall time {time.perf_counter() - started:.1f} s")
    if figures:
        print(f"figures: {', '.join(str(path) for path in figures)}")
    if args.json:
        try:
            run_record.write(args.json, info, args, steps=steps,
                             steps_per_epoch=steps_per_epoch, default_epochs=DEFAULT_EPOCHS,
                             batch_size=BATCH_SIZE, train_images=len(data.y_train), tables=tables)
        except OSError as exc:
            return cli_args.error("lrfast demo", f"cannot write {args.json}: {exc.strerror}")
    return 0
