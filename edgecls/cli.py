"""edgecls command line: the click group and its commands (each in edgecls/commands/<name>.py),
and `main`, which turns every error into one line and an exit code."""

from __future__ import annotations

import os
import sys

import click

from edgecls import __version__
from edgecls.commands.bench import bench
from edgecls.commands.boards import boards
from edgecls.commands.compile import compile
from edgecls.commands.demo_model import demo_model
from edgecls.commands.deploy import deploy
from edgecls.commands.inspect import inspect
from edgecls.commands.optimize import optimize
from edgecls.commands.report import report
from edgecls.commands.run import run
from edgecls.commands.runtimes import runtimes
from edgecls.commands.targets import targets
from edgecls.commands.tune import tune
from edgecls.errors import EdgeclsError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgecls")
def cli():
    """Take a trained image classifier to edge boards: compile with TVM, run, verify."""


for _command in (targets, compile, optimize, inspect, run, demo_model, runtimes, boards, deploy, bench, report, tune):
    cli.add_command(_command)


def main(argv=None):
    """Entry point: user errors become one line on stderr and a non-zero exit, never a traceback."""
    try:
        rv = cli.main(args=argv, prog_name="edgecls", standalone_mode=False)
    except EdgeclsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        if os.environ.get("EDGECLS_DEBUG"):
            raise
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        click.echo(f"error: {exc.strerror or exc}{where}", err=True)
        sys.exit(1)
    except Exception as exc:  # a bug of ours: still one line, with a way to get the traceback
        if os.environ.get("EDGECLS_DEBUG"):
            raise
        msg = " ".join(str(exc).split())[:300]
        click.echo(f"error: internal error {type(exc).__name__}: {msg} (set EDGECLS_DEBUG=1 for a traceback)",
                   err=True)
        sys.exit(70)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
