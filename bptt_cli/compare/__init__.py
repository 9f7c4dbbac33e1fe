"""``bptt compare``: variants (modes x grid points x seeds), executors, aggregation.

Every variant is an ordinary run in its own directory under the compare directory:

    runs/<name>/compare-<UTC timestamp>-<id>/
        plan.json                   the variants and their resolved configs (written first)
        <variant id>/               an ordinary run directory (bptt show works on it)
        compare.json                one row per variant and one aggregated row per mode/grid point
        compare.csv                 one row per variant
        compare_summary.csv         one row per mode/grid point (mean and std over its seeds)
        tracking.json               the MLflow parent run of the variants (when MLflow tracking is on)

Everything read back from a compare directory is untrusted: plan.json is size-limited and
type-checked, its configs re-validated, and every variant id must be a plain name whose
directory is a real folder directly inside the compare directory, all checked before anything
is created, run or deleted. Planning is bounded (``MAX_VARIANTS``). A variant decides from its
own directory whether to start, resume or stand (so a Dask retry never duplicates logs), and
stops after its current step when asked, or when the process or client that started it is gone.

The package is cut along its three seams, each importing only those before it: ``plan``
(parsing --modes/--seeds/--grid, the variants, the compare directory and its plan file),
``executors`` (running variants in this process, a process each, or on Dask) and
``aggregate`` (rows, means over seeds, compare.json and compare.csv). This module only
re-exports.
"""

from bptt_cli.compare.aggregate import AGG_FIELDS, CSV_FIELDS, METRIC_PREFERENCE, check_expectations, collect, write_results
from bptt_cli.compare.executors import (
    BLAS_THREAD_VARS,
    DaskStop,
    ProcessPerTaskExecutor,
    Progress,
    VariantFailed,
    WorkerDied,
    execute_all,
    run_variant,
)
from bptt_cli.compare.plan import (
    DONE,
    MAX_VARIANTS,
    PLAN_LIMIT,
    CompareError,
    Variant,
    check_grid_key,
    check_variant_dirs,
    default_modes,
    encode_plan,
    is_compare_dir,
    is_safe_id,
    new_compare_dir,
    parse_grid,
    parse_modes,
    parse_seeds,
    plan,
    read_plan,
    read_summary,
    variant_dir,
    variant_state,
    write_plan,
)

__all__ = [
    "AGG_FIELDS",
    "BLAS_THREAD_VARS",
    "CSV_FIELDS",
    "DONE",
    "MAX_VARIANTS",
    "METRIC_PREFERENCE",
    "PLAN_LIMIT",
    "CompareError",
    "DaskStop",
    "ProcessPerTaskExecutor",
    "Progress",
    "Variant",
    "VariantFailed",
    "WorkerDied",
    "check_expectations",
    "check_grid_key",
    "check_variant_dirs",
    "collect",
    "default_modes",
    "encode_plan",
    "execute_all",
    "is_compare_dir",
    "is_safe_id",
    "new_compare_dir",
    "parse_grid",
    "parse_modes",
    "parse_seeds",
    "plan",
    "read_plan",
    "read_summary",
    "run_variant",
    "variant_dir",
    "variant_state",
    "write_plan",
    "write_results",
]
