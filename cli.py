"""bidm-ref command line: `python cli.py {info,bench,train,sample,...} --help`.

Thin by design: each subcommand parses its flags into the package's config dataclasses and
calls one package function.
"""

from __future__ import annotations

import argparse
import sys


def cmd_info(args: argparse.Namespace) -> None:
    import numpy as np

    from bidm_ref.models.config import preset
    from bidm_ref.models.unet import UNet

    model = UNet(preset(args.preset), rng=np.random.default_rng(0))
    print(f"preset {args.preset}: {model.cfg}")
    print(f"parameters: {model.num_parameters():,}")


def cmd_bench(args: argparse.Namespace) -> None:
    from bench.bench_conv import bench_conv
    from bench.timing import format_table, write_report

    results = bench_conv(args.repeats)
    print(format_table(results))
    if args.json:
        write_report(args.json, results, {})
        print(f"wrote {args.json}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cli.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="print a preset's config and parameter count")
    p.add_argument("--preset", default="tiny", help="tiny | cifar10")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="time the kernels and layers (prints a table, --json writes a report)")
    p.add_argument("--what", default="conv", choices=["conv"], help="which benchmark")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None, help="also write the JSON report here")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, KeyError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
