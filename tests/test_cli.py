import subprocess
import sys

from moelab import __version__
from moelab.cli import COMMANDS, main


def _moelab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moelab", *args], capture_output=True, text=True, timeout=60)


def test_help_lists_every_subcommand():
    proc = _moelab("--help")
    assert proc.returncode == 0
    for name in COMMANDS:
        assert name in proc.stdout


def test_version():
    proc = _moelab("--version")
    assert proc.returncode == 0
    assert __version__ in proc.stdout


def test_unknown_command_is_a_one_line_error_with_exit_2():
    proc = _moelab("nonsense")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "nonsense" in lines[0]


def test_no_command_is_an_error(capsys):
    try:
        rc = main([])
    except SystemExit as exc:
        rc = exc.code
    assert rc == 2


def test_help_does_not_import_jax():
    code = "import sys; from moelab.cli import build_parser; build_parser(); print('jax' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False"
