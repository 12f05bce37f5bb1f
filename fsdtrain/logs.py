"""Operations output: the ``fsdtrain`` logger hierarchy, rank-aware, on stderr.

Every fsdtrain module logs to ``logging.getLogger(__name__)`` (``fsdtrain.<module>``); ``print`` is
kept for a command's own result on stdout. The CLI calls :func:`setup_logging` once per process,
which gives the ``fsdtrain`` logger one stderr handler and a level:

- level: ``--log-level`` (DEBUG, INFO, WARNING, ERROR), else ``$FSDTRAIN_LOG_LEVEL``, else INFO. The CLI
  puts a given ``--log-level`` into ``$FSDTRAIN_LOG_LEVEL``, so child processes (Lightning's per-rank
  re-launch, the demo's ``fsdtrain fit``) log at the same level.
- format: ``fsdtrain: <message>`` in a single-rank job, ``fsdtrain[rank N]: <message>`` when the world
  size is above 1. Rank and world size are read when a line is written (a Lightning parent process
  becomes rank 0 of a larger world once it has started the other ranks): from ``torch.distributed``
  once a process group is up (Lightning removes ``WORLD_SIZE`` again at the end of fit, the group stays
  until exit), else from the environment: the world size from ``WORLD_SIZE`` (torchrun, DeepSpeed's
  launcher, Lightning), else ``SLURM_NTASKS`` (srun); the rank from ``RANK`` (torchrun, DeepSpeed), else
  ``SLURM_PROCID`` (srun), else ``LOCAL_RANK`` (Lightning's own launcher, which sets no global rank: on
  several nodes it is the rank within the node).

Records also propagate to the root logger, so pytest's ``caplog`` and an application's own handlers
see them (a handler on the root prints them a second time).

This module imports nothing from fsdtrain, so every layer may use it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

__all__ = ["LEVELS", "LEVEL_ENV", "parse_level", "rank_and_world", "prefix", "setup_logging"]

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LEVEL_ENV = "FSDTRAIN_LOG_LEVEL"
_HANDLER_NAME = "fsdtrain-stderr"


def parse_level(text: str | None) -> int:
    """``"debug"``/``"INFO"``/... -> the logging level; ``None``: ``$FSDTRAIN_LOG_LEVEL``, else INFO.

    Raises:
        ValueError: not one of :data:`LEVELS` (the message says which setting was wrong).
    """
    source = "--log-level"
    if text is None:
        text, source = os.environ.get(LEVEL_ENV) or "INFO", f"${LEVEL_ENV}"
    name = text.strip().upper()
    if name not in LEVELS:
        raise ValueError(f"{source} {text!r} is not one of {', '.join(LEVELS)}")
    return getattr(logging, name)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def rank_and_world(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(rank, world size) of this process: its process group's, else from the launchers' environment
    variables (module docstring); ``environ`` given: from those variables only."""
    if environ is None:
        dist = sys.modules.get("torch.distributed")  # never imported here: a process without torch has no group
        if dist is not None and dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    env = os.environ if environ is None else environ
    world = _int(env.get("WORLD_SIZE")) or _int(env.get("SLURM_NTASKS")) or 1
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        rank = _int(env.get(name))
        if rank is not None:
            return rank, world
    return 0, world


def prefix(environ: Mapping[str, str] | None = None) -> str:
    """``fsdtrain`` on a single rank, ``fsdtrain[rank N]`` when the world size is above 1."""
    rank, world = rank_and_world(environ)
    return f"fsdtrain[rank {rank}]" if world > 1 else "fsdtrain"


class _RankFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{prefix()}: {super().format(record)}"


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a line is written (a redirect or pytest's capture), not as it was at set-up."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.setStream; the stream is always sys.stderr
        pass


def setup_logging(level: str | int | None = None) -> logging.Logger:
    """Configures the ``fsdtrain`` logger: one stderr handler (added once per process; later calls only
    change the level) and ``level`` (a name of :data:`LEVELS`, a logging level, or ``None`` for
    ``$FSDTRAIN_LOG_LEVEL`` or INFO).

    Raises:
        ValueError: an unknown level name, given or in ``$FSDTRAIN_LOG_LEVEL``.
    """
    logger = logging.getLogger("fsdtrain")
    logger.setLevel(level if isinstance(level, int) else parse_level(level))
    if not any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        handler = _StderrHandler()
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(_RankFormatter("%(message)s"))
        logger.addHandler(handler)
    return logger
