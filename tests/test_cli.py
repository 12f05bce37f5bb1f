"""The command line as a user meets it: --help everywhere, one-line errors, exit codes."""

import argparse
import subprocess
import sys
from importlib import metadata

import pytest

from fsdtrain.cli import _parser, main

COMMANDS = [
    ["--help"], ["store", "serve", "--help"], ["data", "synth", "--help"], ["data", "inspect", "--help"],
    ["data", "verify", "--help"], ["data", "write", "--help"], ["eval", "--help"], ["export", "--help"], ["launch", "--help"], ["demo", "--help"], ["fit", "--help"], ["finetune", "--help"],
]  # fmt: skip


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a))
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fsdtrain", *args], capture_output=True, text=True, timeout=300, env=env)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    # libraries may log set-up lines first; the error is one line, the last, and the only error
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == [lines[-1]] and lines[-1].startswith("fsdtrain: error:"), proc.stderr
    for f in fragments:
        assert f in lines[-1]


def test_unknown_country(tmp_path):
    assert_one_line_error(run_cli("data", "synth", "--out", str(tmp_path / "d"), "--countries", "CN,XX", "--clips", "1"), "XX")
    assert not any(tmp_path.rglob("*.tar"))


def test_wrong_url_scheme():
    assert_one_line_error(run_cli("data", "inspect", "ftp://host/data"), "ftp")


def test_missing_manifest(tmp_path):
    assert_one_line_error(run_cli("data", "inspect", str(tmp_path)), "manifest")


def test_eval_of_a_missing_weights_file(tmp_path):
    assert_one_line_error(run_cli("eval", "--ckpt", str(tmp_path / "none.safetensors"), "--data", str(tmp_path)), "no weights file")


def test_fit_with_a_missing_manifest_and_a_bad_flag(tmp_path):
    args = ["fit", "--config", "configs/demo.yaml", "--workdir", str(tmp_path / "w"), "--data.train", f"[{tmp_path}/none]", "--trainer.devices", "1"]
    assert_one_line_error(run_cli(*args), "manifest")
    assert_one_line_error(run_cli("fit", "--config", "configs/demo.yaml", "--model.net.no_such_field", "3"), "no_such_field")


def test_finetune_needs_weights():
    assert_one_line_error(run_cli("finetune", "--config", "configs/finetune_cn.yaml"), "--from")


def test_inspect_and_verify_a_fleet(tiny_fleet):
    proc = run_cli("data", "inspect", tiny_fleet["CN"]["train"])
    assert proc.returncode == 0, proc.stderr
    assert "CN" in proc.stdout and "cn" in proc.stdout
    proc = run_cli("data", "verify", tiny_fleet["US"]["val"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 problem(s)" in proc.stdout


def test_store_serve_on_a_busy_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert_one_line_error(run_cli("store", "serve", "--port", str(port)), f"port {port} is in use")


def test_site_zone_has_one_spelling_and_the_old_one_still_works_with_a_warning(tiny_fleet, capsys):
    """``--site.zone`` on every command, as on fit; ``--site-zone`` (earlier releases) warns but works."""
    cn = tiny_fleet["CN"]["train"]
    assert main(["data", "verify", cn, "--fast", "--site.zone", "cn"]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert main(["data", "verify", cn, "--fast", "--site-zone", "cn"]) == 0
    assert "--site-zone is deprecated and goes away in the next release; write --site.zone" in capsys.readouterr().err
    assert main(["data", "verify", cn, "--fast", "--site.zone", "global"]) == 2  # the zone is applied: CN data is refused
    assert "residency:" in capsys.readouterr().err
    for command in (["eval", "--help"], ["export", "--help"], ["data", "inspect", "--help"], ["data", "verify", "--help"]):
        with pytest.raises(SystemExit):
            main(command)
        out = capsys.readouterr().out
        assert "--site.zone" in out and "--site-zone" not in out, command


def _subparsers(parser, path=()):
    """(command words, parser) for every command and action of the ``fsdtrain`` parser."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _subparsers(child, (*path, name))


def _flat(text: str) -> str:
    """Text without its white space: help is wrapped at spaces and after hyphens."""
    return "".join(text.split())


def test_every_flag_says_what_it_is_whether_it_is_required_and_its_default(capsys):
    """Each command's --help, as printed: every flag has a text, a required one says so, and a default
    other than none/off is shown (unless the text already names it)."""
    checked = 0
    for words, parser in _subparsers(_parser()):
        if not parser.add_help:  # fit, validate, test, finetune: LightningCLI's help (below)
            continue
        with pytest.raises(SystemExit) as exit_info:
            main([*words, "--help"])
        assert exit_info.value.code == 0
        page = _flat(capsys.readouterr().out)
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction) or action.dest in ("help", "version"):
                continue
            assert action.help, f"fsdtrain {' '.join(words)} {action.option_strings or action.dest}: no help text"
            want = action.help
            if action.required and action.option_strings:
                want += " (required)"
            if action.option_strings and action.default is not None and action.default is not False and "default" not in action.help:
                want += f" (default: {action.default})"
            assert _flat(want) in page, f"fsdtrain {' '.join(words)} --help lacks: {want}"
            checked += 1
    assert checked > 80  # every command's flags were seen


def test_finetune_help_names_its_required_from_then_fits_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert out.startswith("usage: fsdtrain finetune --config CONFIG --from WEIGHTS [fit options]")
    assert "--from WEIGHTS  the model.safetensors of the pretraining run (required)" in out
    assert "--trainer.max_steps" in out and "--model.finetune.train_heads" in out  # fit's own options follow


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout == f"fsdtrain {metadata.version('fsdtrain')}\n" and proc.stderr == ""
