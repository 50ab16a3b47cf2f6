"""click options shared by several command modules."""

from __future__ import annotations

from pathlib import Path

import click

targets_dir_option = click.option(
    "--targets-dir", envvar="EDGECLS_TARGETS", default=None, metavar="DIR",
    help="Extra folder(s) of target TOML files (also EDGECLS_TARGETS; ':'-separated).")
boards_option = click.option("--boards", "inventory", envvar="EDGECLS_BOARDS", default=None,
                             type=click.Path(path_type=Path),
                             help="Board inventory TOML (default ~/.config/edgecls/boards.toml; EDGECLS_BOARDS).")
ssh_config_option = click.option("--ssh-config", envvar="EDGECLS_SSH_CONFIG", default=None,
                                 type=click.Path(path_type=Path),
                                 help="ssh config file passed as -F to every ssh/rsync (EDGECLS_SSH_CONFIG).")
accept_new_option = click.option("--accept-new-host-key", is_flag=True,
                                 help="Trust a board's host key on first contact (never a changed one).")
mlflow_option = click.option("--mlflow", "mlflow_uri", envvar="EDGECLS_MLFLOW", default=None, metavar="URI",
                             help="Also log this run to MLflow (extra edgecls[mlflow]), e.g. file:///tmp/mlruns.")
