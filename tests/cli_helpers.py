"""Running ``memcell``'s command line inside a test: one helper for every CLI test file."""

from memcell import cli


def run_main(argv, capsys):
    """``cli.main(argv)`` as the shell would see it: ``(exit code, stdout, stderr)``; argparse's
    own exits (``SystemExit``) count as exit codes."""
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err
