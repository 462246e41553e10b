"""``lrfast schedule``: print (and optionally plot) a learning-rate schedule.

    lrfast schedule "warmup(cosine_restarts(0.1, 200, cycle_mult=2, peak_decay=0.8), 50)" \\
        --steps 1000 --every 100 --plot schedule.png

The expression is parsed safely by :func:`lrfast.schedules.parse_schedule`
(schedule constructors and literals only; nothing is evaluated).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import inspect
import math
from pathlib import Path

from . import cli_args

# Schedules take step counts below 2**63; a plot draws every step.
MAX_STEPS = 2**63
MAX_PLOT_STEPS = 10**7

_EPILOG = """\
schedules: constant, step_decay, multistep_decay, exponential_decay,
polynomial_decay, inverse_time_decay, cosine_decay, cosine_restarts, cyclic,
one_cycle, linear, warmup, join (see lrfast.schedules for their arguments).

example:
  lrfast schedule "warmup(cosine_restarts(0.1, 200, cycle_mult=2, peak_decay=0.8), 50)" \\
      --steps 1000 --every 100 --plot schedule.png
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "schedule",
        help="print and plot a learning-rate schedule",
        description="Print a table of a learning-rate schedule's values and optionally plot it.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("expression", help='a schedule in call syntax, e.g. "cosine_decay(0.1, 1000)"')
    parser.add_argument("--steps", type=cli_args.int_in(1, MAX_STEPS, "2**63"), required=True, metavar="N",
                        help="number of steps to show (1 to 2**63)")
    parser.add_argument(
        "--every", type=cli_args.positive_int, metavar="K",
        help="print every K-th step (default: about 20 rows); the last step is always printed"
    )
    parser.add_argument("--plot", metavar="PNG", type=cli_args.output_file,
                        help=f"also draw the curve to this image file (needs matplotlib; "
                             f"--steps at most {MAX_PLOT_STEPS:.0e})")
    parser.add_argument("--log", action="store_true", help="log scale for the learning rate in the plot")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .schedules import parse_schedule, plot_schedule

    if args.plot and (refused := _check_plot(args)) is not None:
        return refused
    every = args.every if args.every is not None else max(1, math.ceil(args.steps / 20))
    try:
        schedule = parse_schedule(args.expression)
    except TypeError as exc:
        return _error(_misfit_call(args.expression) or str(exc))
    except ValueError as exc:
        return _error(str(exc))
    # Hostile input (thousands of nested signs or calls, huge numbers) that the
    # parser itself may not turn into ValueError.
    except OverflowError as exc:
        return _error(f"a number in the expression is out of range ({exc})")
    except (RecursionError, MemoryError):
        return _error("the expression is nested too deeply or too long to parse")

    steps = sorted({*range(0, args.steps, every), args.steps - 1})
    try:
        rates = schedule.values(steps)
        momentum = getattr(schedule, "momentum_values", None)
        momenta = None if momentum is None else momentum(steps)
    except (ValueError, OverflowError) as exc:
        return _error(f"cannot evaluate {schedule!r}: {exc}")
    print(repr(schedule))
    if momenta is None:
        print(f"{'step':>10}  {'lr':>14}")
        for t, lr in zip(steps, rates):
            print(f"{t:>10}  {lr:>14.6g}")
    else:
        print(f"{'step':>10}  {'lr':>14}  {'momentum':>10}")
        for t, lr, m in zip(steps, rates, momenta):
            print(f"{t:>10}  {lr:>14.6g}  {m:>10.4g}")

    if args.plot:
        try:
            plot_schedule(schedule, args.steps, path=args.plot, log=args.log)
        except (OSError, ValueError) as exc:  # e.g. a full disk, or matplotlib refusing the file
            return _error(f"cannot write the plot {args.plot!r}: {exc}", code=1)
        print(f"plot written to {args.plot}")
    return 0


def _check_plot(args: argparse.Namespace) -> int | None:
    """The exit status of a --plot that cannot be drawn, reported before the
    table rather than after it; None when it can."""
    if args.steps > MAX_PLOT_STEPS:
        return _error(f"--plot draws every step: --steps must be at most "
                      f"{MAX_PLOT_STEPS:.0e} with it, got {args.steps}")
    if importlib.util.find_spec("matplotlib") is None:
        return _error('--plot needs matplotlib: pip install "lrfast[plot]"', code=1)
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if Path(args.plot).suffix[1:].lower() not in formats:
        return _error(f"--plot: the file name must end in an image format matplotlib "
                      f"writes ({', '.join(sorted(formats))}), got {args.plot!r}")
    return None


def _misfit_call(expression: str) -> str | None:
    """For a schedule call whose arguments do not fit its constructor (the
    parser would say ``cosine_decay.__init__() missing 1 required positional
    argument``): the call's signature and what does not fit. None when every
    call fits (the TypeError came from a value)."""
    from . import schedules

    for node in ast.walk(ast.parse(expression.strip(), mode="eval")):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        constructor = getattr(schedules, node.func.id, None)
        if node.func.id not in schedules.__all__ or not inspect.isclass(constructor):
            continue
        signature = inspect.signature(constructor)
        try:
            signature.bind(*node.args, **{kw.arg or "**": kw.value for kw in node.keywords})
        except TypeError as exc:
            shown = signature.replace(
                parameters=[p.replace(annotation=inspect.Parameter.empty)
                            for p in signature.parameters.values()],
                return_annotation=inspect.Signature.empty)
            return f"{node.func.id}{shown}: {exc}"
    return None


def _error(message: str, code: int = 2) -> int:
    return cli_args.error("lrfast schedule", message, code)
