"""Running a ladon-* command in-process the way its console script does, and checking its one-line errors."""
from ladon_deploy.cli_support import run_command


def command_runner(prog, main):
    """(run, one_line_error) for one command: run(argv, capsys) -> (exit code, stdout, stderr)."""

    def run(argv, capsys):
        code = run_command(prog, main, argv)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    def one_line_error(code, err, pattern):
        assert code == 2, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(prog + ": error"), err
        assert pattern in lines[0], lines[0]

    return run, one_line_error
