"""Operations output (fsdtrain/logs.py): through ``logging`` on stderr, ``fsdtrain[rank N]:`` on several
ranks, ``--log-level`` / ``$FSDTRAIN_LOG_LEVEL`` on every command; a command's result stays on stdout."""

import logging
import os
import sys
from types import SimpleNamespace

import pytest

from fsdtrain.cli import _take_log_level, main
from fsdtrain.logs import LEVEL_ENV, parse_level, prefix, rank_and_world, setup_logging

RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS")


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    """No launcher variables, no level in the environment, and the ``fsdtrain`` logger as it was, after the test."""
    for name in (*RANK_VARS, LEVEL_ENV):
        monkeypatch.setenv(name, "0")  # so that the end of the test restores the variable, even one main() sets
        monkeypatch.delenv(name)
    logger = logging.getLogger("fsdtrain")
    level, handlers = logger.level, list(logger.handlers)
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers


@pytest.mark.parametrize(
    "env, want",
    [
        ({}, "fsdtrain"),
        ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, "fsdtrain[rank 3]"),  # torchrun, DeepSpeed's launcher
        ({"SLURM_PROCID": "5", "SLURM_NTASKS": "64"}, "fsdtrain[rank 5]"),  # srun
        ({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}, "fsdtrain[rank 1]"),  # Lightning's own launcher
        ({"RANK": "0", "WORLD_SIZE": "1"}, "fsdtrain"),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, "fsdtrain"),
    ],
    ids=["alone", "torchrun", "slurm", "lightning", "world-of-1", "slurm-1-task"],
)
def test_prefix_names_the_rank_when_there_are_several(env, want):
    assert prefix(env) == want


def test_rank_and_world_prefer_the_global_rank():
    assert rank_and_world({"RANK": "9", "SLURM_PROCID": "2", "LOCAL_RANK": "1", "WORLD_SIZE": "16", "SLURM_NTASKS": "4"}) == (9, 16)
    assert rank_and_world({"LOCAL_RANK": "x", "WORLD_SIZE": ""}) == (0, 1)


def test_a_log_line_on_a_multi_rank_job_names_its_rank(monkeypatch, capsys):
    setup_logging("INFO")
    logging.getLogger("fsdtrain.somewhere").info("global batch 64 = micro batch 4 x accumulation 2 x 8 ranks")
    # read when the line is written: a Lightning parent becomes rank 0 of 2 once it has started rank 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    logging.getLogger("fsdtrain.somewhere").info("weights written to w.safetensors")
    monkeypatch.setenv("RANK", "1")
    logging.getLogger("fsdtrain.somewhere").warning("data.country_weights: CN unused")
    # a process group, once up, says it (Lightning removes WORLD_SIZE again at the end of fit)
    monkeypatch.delenv("WORLD_SIZE")
    group = SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True, get_rank=lambda: 3, get_world_size=lambda: 4)
    monkeypatch.setitem(sys.modules, "torch.distributed", group)
    logging.getLogger("fsdtrain.somewhere").info("head-only weights (CN) written")
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "fsdtrain: global batch 64 = micro batch 4 x accumulation 2 x 8 ranks",
        "fsdtrain[rank 0]: weights written to w.safetensors",
        "fsdtrain[rank 1]: data.country_weights: CN unused",
        "fsdtrain[rank 3]: head-only weights (CN) written",
    ]


def test_levels_filter_and_setup_adds_one_handler(monkeypatch, capsys):
    log = logging.getLogger("fsdtrain.somewhere")
    setup_logging("warning")
    setup_logging("WARNING")
    assert sum(h.get_name() == "fsdtrain-stderr" for h in logging.getLogger("fsdtrain").handlers) == 1
    log.info("chatter")
    log.warning("W&B lineage: cannot use artifact")
    assert capsys.readouterr().err == "fsdtrain: W&B lineage: cannot use artifact\n"

    monkeypatch.setenv(LEVEL_ENV, "ERROR")
    setup_logging()  # no flag: the environment's level
    log.warning("quiet now")
    log.error("still said")
    assert capsys.readouterr().err == "fsdtrain: still said\n"

    monkeypatch.delenv(LEVEL_ENV)
    setup_logging()  # neither: INFO
    log.debug("not said")
    log.info("said")
    assert capsys.readouterr().err == "fsdtrain: said\n"

    assert parse_level("debug") == logging.DEBUG
    with pytest.raises(ValueError, match="--log-level 'LOUD' is not one of DEBUG, INFO, WARNING, ERROR"):
        parse_level("LOUD")
    monkeypatch.setenv(LEVEL_ENV, "verbose")
    with pytest.raises(ValueError, match=r"\$FSDTRAIN_LOG_LEVEL 'verbose' is not one of"):
        setup_logging()


def test_take_log_level_anywhere_before_the_fit_overrides():
    assert _take_log_level(["--log-level", "DEBUG", "data", "inspect", "u"]) == ("DEBUG", ["data", "inspect", "u"])
    assert _take_log_level(["fit", "--config", "c.yaml", "--log-level=warning"]) == ("warning", ["fit", "--config", "c.yaml"])
    assert _take_log_level(["launch", "slurm", "--", "--log-level", "ERROR"]) == (None, ["launch", "slurm", "--", "--log-level", "ERROR"])
    assert _take_log_level(["demo"]) == (None, ["demo"])


def test_results_on_stdout_operations_on_stderr_at_the_level_asked(tmp_path, capsys):
    url = f"file://{tmp_path}/fleet"
    args = ["--countries", "DE", "--clips", "1", "--clips-per-shard", "1", "--width", "64", "--height", "48", "--seconds", "5"]
    assert main(["data", "synth", "--out", url, *args]) == 0  # default level INFO: a progress line per clip
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("fsdtrain: DE: clip 1/1 ") and len(err.splitlines()) == 1

    assert main(["data", "verify", f"{url}/train/DE", "--fast"]) == 0
    out, err = capsys.readouterr()
    assert out == "0 problem(s)\n"  # the result
    assert err.startswith("fsdtrain: data verify: 1/1 shards (100%) in ") and len(err.splitlines()) == 1  # its progress
    assert err.endswith(f"; last: checked {url}/train/DE/shard-000000.tar (1 clips, 0 problem(s))\n")

    assert main(["--log-level", "WARNING", "data", "verify", f"{url}/train/DE", "--fast"]) == 0
    out, err = capsys.readouterr()
    assert out == "0 problem(s)\n" and err == ""
    assert os.environ[LEVEL_ENV] == "WARNING"  # for child processes

    assert main(["data", "inspect", f"{url}/train/DE", "--log-level", "debug"]) == 0  # after the command too
    out, err = capsys.readouterr()
    assert "DE" in out and err == ""
    assert logging.getLogger("fsdtrain").level == logging.DEBUG and os.environ[LEVEL_ENV] == "DEBUG"


def test_a_bad_level_is_a_one_line_error(capsys):
    assert main(["--log-level", "LOUD", "data", "inspect", "file:///nowhere"]) == 2
    assert capsys.readouterr().err == "fsdtrain: error: --log-level 'LOUD' is not one of DEBUG, INFO, WARNING, ERROR\n"
    assert main(["data", "inspect", "file:///nowhere", "--log-level"]) == 2
    assert capsys.readouterr().err == "fsdtrain: error: --log-level needs a level: DEBUG, INFO, WARNING, ERROR\n"


def test_lightning_commands_take_the_flag_too(capsys):
    # LightningCLI never sees --log-level: the one flag it does not know is the misspelt one
    assert main(["fit", "--log-level", "ERROR", "--trainer.no_such_field", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fsdtrain: error:") and "no_such_field" in err[0] and "log" not in err[0], err
    assert logging.getLogger("fsdtrain").level == logging.ERROR


def test_every_argparse_command_lists_the_flag(capsys):
    for argv in (["--help"], ["data", "verify", "--help"], ["store", "serve", "--help"], ["launch", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "--log-level" in capsys.readouterr().out, argv
