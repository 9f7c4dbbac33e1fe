"""The task library: pure NumPy sequence generators, one module per task, registered by name.

    make_task("delay", {"delay": 20}, seed=1).train_batch(step, batch_size) -> Batch(x, targets, mask)

See ``base.py`` for the contract every task keeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from bptt_cli.tasks.adding import AddingTask
from bptt_cli.tasks.agreement import AgreementTask
from bptt_cli.tasks.base import Batch, Param, Task, TaskError, closest
from bptt_cli.tasks.copy_memory import CopyMemoryTask
from bptt_cli.tasks.delay import DelayTask
from bptt_cli.tasks.influence import InfluenceTask
from bptt_cli.tasks.sine import SineTask
from bptt_cli.tasks.temporal_order import TemporalOrderTask
from bptt_cli.tasks.text import TextTask

__all__ = ["REGISTRY", "Batch", "Param", "Task", "TaskError", "get_task_class", "make_task"]

# The order `bptt tasks` lists them in: synthetic memory tests first, roughly by difficulty.
REGISTRY: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (
        DelayTask,
        AddingTask,
        CopyMemoryTask,
        AgreementTask,
        TemporalOrderTask,
        SineTask,
        InfluenceTask,
        TextTask,
    )
}


def get_task_class(name: str) -> type[Task]:
    """The task class registered as ``name``, or a TaskError suggesting the nearest name."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise TaskError(
            f"unknown task {name!r}{closest(str(name), list(REGISTRY))}; tasks are: {', '.join(REGISTRY)}",
            None,
        ) from None


def make_task(
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    dtype=np.float32,
    cache_dir: Path | None = None,
) -> Task:
    """Build task ``name`` from its parameters (defaults for the rest), a seed and a dtype.

    ``cache_dir``: where a task that reads a file keeps its encoded form (the text task's
    memory-mapped corpus, shared by every process that reads the same bytes); None for the
    default, ``$BPTT_CACHE_DIR`` or ``$XDG_CACHE_HOME/bptt`` or ``~/.cache/bptt``.
    """
    return get_task_class(name)(params, seed=seed, dtype=dtype, cache_dir=cache_dir)
