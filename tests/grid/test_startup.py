"""What a grid process imports before its first call: checking every call's config (cir.config_checks) and deciding
what is done (cir.completion's fingerprints) import neither Lightning nor open_clip nor transformers, which would
cost every start of a grid seconds (a grid killed and rerun pays them again each time; tests/grid/test_chaos.py)."""

from __future__ import annotations

import subprocess
import sys

from tiny_grid import make_benchmark, write_grid

HEAVY = ("lightning", "open_clip", "transformers", "timm", "torchmetrics", "peft")
# a dry run checks every call and asks each whether it is done, then prints the commands
DRY_RUN = """
import sys
from cir.grid.__main__ import cli
try:
    cli([sys.argv[1], "--dry-run"])
except SystemExit as exit_info:
    assert not exit_info.code, exit_info.code
print("loaded:", sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[2:])))
"""


def test_a_grid_checks_and_plans_its_calls_without_the_model_libraries(tmp_path) -> None:
    grid_file = write_grid(tmp_path / "grid.yaml", make_benchmark(tmp_path / "benchmark"), tmp_path / "out", cells=2)
    result = subprocess.run([sys.executable, "-c", DRY_RUN, str(grid_file), *HEAVY], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "-m cir.evaluate" in result.stdout, result.stdout
    assert result.stdout.splitlines()[-1] == "loaded: []", result.stdout
