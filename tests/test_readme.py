"""README.md's generated sections (efficiency table, ablation table, bench ratios) match their sources."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_generated_sections_are_current():
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "readme_tables.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_first_command_installs_and_samples():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```")[1].strip()
    assert "pip install -e '.[test]'" in first_block and first_block.endswith("python cli.py sample")
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = readme.split("```")[3].strip()
    assert test_command in ci
