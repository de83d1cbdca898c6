"""Regenerate the golden files into this folder: `python golden/generate.py [--check]`.

The same as `python cli.py golden --out golden/v1 [--check]`, from any working directory: it runs the
command line of the checkout this file is in, with --out pointing at golden/v1 next to this file
(a later --out on the command line wins).
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import cli  # noqa: E402  (the checkout's cli.py, found through the path set above)

if __name__ == "__main__":
    sys.exit(cli.main(["golden", "--out", str(HERE / "v1"), *sys.argv[1:]]))
