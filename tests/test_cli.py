"""The installed ``genrefusion`` command: its subcommands are the scripts, run as if started directly."""
import subprocess

from conftest import GENREFUSION
from genrefusion.cli import COMMANDS, ROOT


def test_help_lists_every_subcommand_and_each_names_an_existing_script():
    result = subprocess.run([GENREFUSION, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for name, (script, _) in COMMANDS.items():
        assert f"  {name} " in result.stdout, name
        assert (ROOT / "scripts" / script).is_file(), script
    assert {"run", "score", "explain", "compare"} <= set(COMMANDS)


def test_a_subcommand_keeps_its_scripts_arguments_and_exit_status(tmp_path):
    unknown = subprocess.run([GENREFUSION, "trian"], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "unknown command 'trian'" in unknown.stderr
    # argparse's own usage error (exit 2) from scripts/compare_runs.py, through the command.
    compare = subprocess.run([GENREFUSION, "compare"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert compare.returncode == 2 and "compare_runs.py" in compare.stderr
    # A Hydra app's config mistake: one readable line, exit status 2, as from the script.
    run = subprocess.run([GENREFUSION, "run", f"paths.root_dir={tmp_path}", "split=nope"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert run.returncode != 0 and "split" in run.stderr and "Traceback" not in run.stderr


def test_a_script_that_exits_with_a_message_says_it_through_the_command(tmp_path, monkeypatch, capsys):
    import sys

    import genrefusion.cli as cli

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the command sets the script's own argv
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "run.py").write_text("import sys\nsys.exit('error: no such run folder')\n")
    monkeypatch.setattr(cli, "ROOT", tmp_path)
    assert cli.main(["run"]) == 1
    assert "error: no such run folder" in capsys.readouterr().err
