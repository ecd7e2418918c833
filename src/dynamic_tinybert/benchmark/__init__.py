"""`dtb bench`: this project beside the transformers pipeline, ONNX Runtime and OpenVINO, same weights and questions.

    result = run_benchmark("path/to/checkpoint", load_squad("dev-v1.1.json.gz", limit=500), threads=1)
    write_results(result, "bench/results/speed")  # speed.md, speed.json, speed.png

`systems` names the competitors, `run` measures them, `report` writes the table and plot, `provenance`
records what produced a result. The transformers, ONNX Runtime and OpenVINO systems need the bench extra
(`pip install -e ".[bench]"`); the project's own systems need nothing beyond the library.
"""

from .report import markdown, plot, write_results
from .run import int8_config, measure, onnx_export, onnx_int8, openvino_export, run_benchmark, summary
from .systems import (
    DEFAULT_SYSTEMS,
    INSTALL_HINT,
    KINDS,
    Built,
    System,
    Workload,
    build,
    check_dependencies,
    parse_systems,
)

__all__ = [
    "DEFAULT_SYSTEMS",
    "INSTALL_HINT",
    "KINDS",
    "Built",
    "System",
    "Workload",
    "build",
    "check_dependencies",
    "int8_config",
    "markdown",
    "measure",
    "onnx_export",
    "onnx_int8",
    "openvino_export",
    "parse_systems",
    "plot",
    "run_benchmark",
    "summary",
    "write_results",
]
