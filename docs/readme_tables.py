"""Copy the generated tables into README.md between their markers, or check that they are current.

    python docs/readme_tables.py           # rewrite the generated sections of README.md
    python docs/readme_tables.py --check   # exit 1 (naming the section) if README.md is stale

Sections (README.md holds `<!-- generated:NAME -->` ... `<!-- end:NAME -->`):
    efficiency   `python cli.py bench --table efficiency`, computed from the models here and now
    ablation     results/ablation.md, written by `python cli.py ablate ... --out results`
    latent       the finished rows of results/latent/ablation.md (`cli.py ablate` on the latent teacher)
    latent_flagship  results/latent_flagship/table.md, written by `python cli.py score ... --out results/latent_flagship`
    latent_curve_fid  results/latent_curve_fid/table.md, `cli.py score` of the flagship students' EMA snapshots
    bench        the ratios and machine of results/bench.json, written by `python cli.py bench --json`
    train_speed  results/bench_train.json, `python cli.py bench --what train --json` (vs PyTorch eager)
So the README never holds a retyped number: tests/test_readme.py runs --check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.timing import format_ratio  # noqa: E402
from bidm_ref.experiments.efficiency import efficiency_table, format_efficiency  # noqa: E402
from bidm_ref.storage.atomic import atomic_write  # noqa: E402


def efficiency_section() -> str:
    return "```\n" + format_efficiency(efficiency_table()) + "\n```"


def ablation_section() -> str:
    return (ROOT / "results" / "ablation.md").read_text().strip()


def latent_section() -> str:
    """The latent-space table without its pending rows (only FP, XNOR and BiDM were run in latent space)."""
    lines = (ROOT / "results" / "latent" / "ablation.md").read_text().strip().splitlines()
    return "\n".join(line for line in lines if "| pending |" not in line)


def score_table(folder: str) -> str:
    """The table.md of a `cli.py score` output folder under results/."""
    return (ROOT / "results" / folder / "table.md").read_text().strip()


def measured_on(report: dict) -> str:
    """'Measured with `command` on N cores (...)' of a bench report (reports before 2026-12 name openblas_threads)."""
    machine = report["machine"]
    blas = machine.get("blas_threads", machine.get("openblas_threads", "?"))
    cpu = f"{machine['cpu_model']} ({machine['llvm_cpu']}), " if "cpu_model" in machine else ""
    architectures = sorted({lib["architecture"] for lib in machine.get("blas", []) if lib.get("architecture")})
    kernels = f", OpenBLAS kernels {'/'.join(architectures)}" if architectures else ""
    return (f"Measured with `{report.get('command', 'python cli.py bench')}` on {cpu}{machine['cpu_count']} cores "
            f"(numba {machine['numba']}, numpy {machine['numpy']}, Numba threads {machine.get('numba_threads', '?')}, "
            f"BLAS threads {blas}{kernels})")


def bench_section() -> str:
    report = json.loads((ROOT / "results" / "bench.json").read_text())
    lines = [f"{measured_on(report)}; ratios from one run:", "", "| ratio | value |", "|---|---|"]
    lines += [f"| {key} | {format_ratio(key, value)} |" for key, value in report["ratios"].items()]
    return "\n".join(lines)


def train_speed_section() -> str:
    """results/bench_train.json: each case's project and PyTorch medians and their ratio."""
    report = json.loads((ROOT / "results" / "bench_train.json").read_text())
    medians: dict[tuple[str, str], dict[str, float]] = {}
    for row in report["results"]:
        medians.setdefault((row["name"], row["shape"]), {})[row["impl"]] = row["median_s"]
    lines = [f"{measured_on(report)}; medians of {report['results'][0]['repeats']} interleaved repeats:", "",
             "| what | case | bidm-ref ms | PyTorch eager ms | bidm-ref / PyTorch |", "|---|---|---|---|---|"]
    for (name, shape), by_impl in medians.items():
        ours, torch = by_impl["bidm-ref (NumPy + Numba)"], by_impl.get("PyTorch eager")
        theirs, ratio = (f"{torch * 1e3:.1f}", f"{ours / torch:.2f}x") if torch else ("-", "-")
        lines.append(f"| {name} | {shape} | {ours * 1e3:.1f} | {theirs} | {ratio} |")
    return "\n".join(lines)


SECTIONS = {"efficiency": efficiency_section, "ablation": ablation_section, "latent": latent_section,
            "latent_flagship": lambda: score_table("latent_flagship"),
            "latent_curve_fid": lambda: score_table("latent_curve_fid"), "bench": bench_section,
            "train_speed": train_speed_section}


def section_pattern(name: str) -> re.Pattern:
    """Groups: the start marker line, the body (empty or ending in a newline), the end marker."""
    return re.compile(rf"(<!-- generated:{name} -->\n)(.*?)(<!-- end:{name} -->)", re.S)


def render(readme: str) -> str:
    """README text with every generated section replaced by its current content."""
    for name, make in SECTIONS.items():
        pattern = section_pattern(name)
        if not pattern.search(readme):
            raise ValueError(f"README.md has no <!-- generated:{name} --> ... <!-- end:{name} --> section")
        readme = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(3), readme)
    return readme


def render_one(readme: str, name: str) -> str:
    """The body of one generated section."""
    return section_pattern(name).search(readme).group(2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if a section is stale")
    args = parser.parse_args()
    path = ROOT / "README.md"
    current = path.read_text()
    fresh = render(current)
    if args.check:
        stale = [name for name in SECTIONS if render_one(current, name) != render_one(fresh, name)]
        if stale:
            print(f"README.md: generated section(s) {', '.join(stale)} are stale: run python docs/readme_tables.py")
            return 1
        return 0
    with atomic_write(path, "w") as handle:
        handle.write(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
