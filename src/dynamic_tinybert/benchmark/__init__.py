"""`dtb bench`: this project beside the transformers pipeline and ONNX Runtime, same weights and questions.

    result = run_benchmark("path/to/checkpoint", load_squad("dev-v1.1.json.gz", limit=500), threads=1)
    write_results(result, "bench/results/speed")  # speed.md, speed.json, speed.png

`systems` names the competitors, `run` measures them, `report` writes the table and plot, `provenance`
records what produced a result. The transformers and ONNX Runtime systems need the bench extra
(`pip install -e ".[bench]"`); the project's own systems need nothing beyond the library.
"""

from .report import markdown, plot, write_results
from .run import measure, onnx_export, run_benchmark, summary
from .systems import DEFAULT_SYSTEMS, INSTALL_HINT, KINDS, System, Workload, build, check_dependencies, parse_systems

__all__ = [
    "DEFAULT_SYSTEMS",
    "INSTALL_HINT",
    "KINDS",
    "System",
    "Workload",
    "build",
    "check_dependencies",
    "markdown",
    "measure",
    "onnx_export",
    "parse_systems",
    "plot",
    "run_benchmark",
    "summary",
    "write_results",
]
