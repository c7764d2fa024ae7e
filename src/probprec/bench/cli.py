"""The ``probprec`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    parser = argparse.ArgumentParser(
        prog="probprec", description="Probabilistic preconditioning: demos and benchmarks."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="PreconditionedSGD and SGD side by side on scikit-learn's digits (no download)")
    demo.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    demo.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the initialisation and batch order")
    demo.add_argument("--output-dir", default="results/demo", help="where demo.json and demo.png go")
    args = parser.parse_args(argv)
    if args.command == "demo":
        for name in ("epochs", "batch_size"):
            if getattr(args, name) < 1:
                parser.error(f"--{name.replace('_', '-')} must be an integer >= 1, got {getattr(args, name)}")
        from .demo import run_demo

        run_demo(args.epochs, args.batch_size, args.seed, args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
