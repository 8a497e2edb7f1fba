"""What a user of ``jobs/adapt.py`` sees: disc-ray's own lines on the console, once; Ray's INFO in its log files.

By default (``verbose=False``) the console shows the data counts, one progress line per log step, checkpoint
and export events and errors. Where Ray's console lines come from, and the switch that keeps each off the
console (Ray's log files under ``/tmp/ray/session_*/logs`` still get them):

* the driver's ``ray`` logger ("Started a local Ray instance ..."): ``ray.init(logging_level=WARNING)``;
* Ray Data, on the driver and in its actors (execution plans, "Running Dataset" progress logs and bars): its
  ``ray.data`` console handler at WARNING (the driver's handler directly; actors through
  ``RAY_DATA_LOGGING_CONFIG``, Ray Data's own default config with the console at WARNING, inherited by the
  processes of a local cluster), and progress as log records instead of Ray's distributed tqdm bars
  (``use_ray_tqdm=False`` in the ``DataContext`` that datasets carry to the processes executing them);
* Ray Train's controller and workers (worker group start-up): :func:`train_log_level` for
  ``RunConfig(logging_config=...)``; Train's system log files keep every level. "Reporting training result N:
  TrainingReport(...)" escapes that level (Ray logs it through a logger named by its file path, outside
  ``ray.train``), so :func:`quiet_train_worker` raises each worker's root console handler to WARNING (its log file
  handler keeps INFO);
* Ray-internal deprecation warnings in its actors: ``PYTHONWARNINGS=ignore::DeprecationWarning`` for the
  processes of a local cluster (Python hides these outside ``__main__`` anyway);
* why each progress line printed TWICE: Ray Train patches ``print`` on its workers to log the line through the
  root logger's console handler (stderr) AND, since Ray wraps a worker's stdout, tee it to stdout; Ray's log
  monitor then forwarded both copies. ``RAY_TRAIN_ENABLE_PRINT_PATCH=0`` (which Ray Train propagates from the
  driver to its controller and workers) keeps plain ``print``: one copy, forwarded once.

``verbose=True`` (``jobs/adapt.py --verbose``) changes none of this: Ray's defaults, every line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

QUIET_RAY_LEVEL = logging.WARNING


def quiet_ray_data_config_path() -> str | None:
    """A YAML copy of Ray Data's default logging config with its console handler at WARNING (the file handler
    unchanged), written once under the temp directory; None when this Ray version has no such default."""
    import yaml

    try:
        from ray.data._internal.logging import DEFAULT_CONFIG
    except ImportError:
        return None
    config = yaml.safe_load(yaml.safe_dump(DEFAULT_CONFIG))
    console = config.get("handlers", {}).get("console")
    if console is None:
        return None
    console["level"] = logging.getLevelName(QUIET_RAY_LEVEL)
    text = yaml.safe_dump(config)
    path = Path(tempfile.gettempdir()) / f"disc-ray-ray-data-logging-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml"
    if not path.exists():
        path.write_text(text)
    return str(path)


def quiet_ray_data_on_this_process() -> None:
    """Ray Data's console handler of this process at WARNING; progress logged rather than drawn as Ray tqdm bars
    (the DataContext of every dataset created afterwards, which travels with the dataset to the processes that
    execute it)."""
    import ray.data

    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(QUIET_RAY_LEVEL)
    context = ray.data.DataContext.get_current()
    context.use_ray_tqdm = False  # progress as log records (below WARNING), not tqdm bars forwarded from actors
    context.print_on_execution_start = False


def configure_console(verbose: bool) -> None:
    """Keep Ray's own INFO lines off the console (see the module docstring); no-op when ``verbose``.

    Call it on the driver before Ray starts (a local cluster's processes inherit the environment set here)."""
    if verbose:
        return
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    path = quiet_ray_data_config_path()
    if path is not None:
        os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", path)
    quiet_ray_data_on_this_process()


def ray_logging_level(verbose: bool) -> int:
    """``ray.init(logging_level=...)`` for the driver's ``ray`` logger."""
    return logging.INFO if verbose else QUIET_RAY_LEVEL


def train_log_level(verbose: bool) -> str:
    """``ray.train.LoggingConfig(log_level=...)``: Ray Train's console and application log level."""
    return "INFO" if verbose else logging.getLevelName(QUIET_RAY_LEVEL)


def quiet_train_worker() -> None:
    """On a Ray Train worker (after Ray Train configured its logging): the root logger's console handler at WARNING,
    so Ray's per-report INFO line stays in the worker's log file; no "Loading weights" progress bars; FSDP2's
    one-time view warning off."""
    from ray._private.log import PlainRayHandler
    from transformers.utils import logging as transformers_logging

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PlainRayHandler):
            handler.setLevel(QUIET_RAY_LEVEL)
    transformers_logging.disable_progress_bar()
    # FSDP2 warns once per rank that the model's output is a view; nothing here modifies it in place.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
