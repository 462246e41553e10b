"""``lrfast schedule``: print (and optionally plot) a learning-rate schedule.

    lrfast schedule "warmup(cosine_restarts(0.1, 200, cycle_mult=2, peak_decay=0.8), 50)" \\
        --steps 1000 --every 100 --plot schedule.png

The expression is parsed safely by :func:`lrfast.schedules.parse_schedule`
(schedule constructors and literals only; nothing is evaluated).
"""

from __future__ import annotations

import argparse
import math
import sys

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
    parser.add_argument("--steps", type=int, required=True, metavar="N", help="number of steps to show")
    parser.add_argument(
        "--every", type=int, metavar="K", help="print every K-th step (default: about 20 rows); the last step is always printed"
    )
    parser.add_argument("--plot", metavar="PNG", help="also draw the curve to this image file (needs matplotlib)")
    parser.add_argument("--log", action="store_true", help="log scale for the learning rate in the plot")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .schedules import parse_schedule, plot_schedule

    if args.steps <= 0:
        return _error(f"--steps must be > 0, got {args.steps}")
    every = args.every if args.every is not None else max(1, math.ceil(args.steps / 20))
    if every <= 0:
        return _error(f"--every must be > 0, got {every}")
    try:
        schedule = parse_schedule(args.expression)
    except (ValueError, TypeError) as exc:
        return _error(str(exc))

    steps = sorted({*range(0, args.steps, every), args.steps - 1})
    rates = schedule.values(steps)
    momentum = getattr(schedule, "momentum_values", None)
    print(repr(schedule))
    if momentum is None:
        print(f"{'step':>10}  {'lr':>14}")
        for t, lr in zip(steps, rates):
            print(f"{t:>10}  {lr:>14.6g}")
    else:
        print(f"{'step':>10}  {'lr':>14}  {'momentum':>10}")
        for t, lr, m in zip(steps, rates, momentum(steps)):
            print(f"{t:>10}  {lr:>14.6g}  {m:>10.4g}")

    if args.plot:
        try:
            plot_schedule(schedule, args.steps, path=args.plot, log=args.log)
        except ImportError as exc:
            return _error(str(exc), code=1)
        print(f"plot written to {args.plot}")
    return 0


def _error(message: str, code: int = 2) -> int:
    print(f"lrfast schedule: error: {message}", file=sys.stderr)
    return code
