"""`edgecls deploy`: an artifact onto a board."""

from __future__ import annotations

from pathlib import Path

import click

from edgecls.commands.options import accept_new_option, boards_option, ssh_config_option


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--board", "-b", "board_name", required=True)
@boards_option
@ssh_config_option
@accept_new_option
def deploy(artifact, board_name, inventory, ssh_config, accept_new_host_key):
    """Upload an artifact to a board: atomic, checksum-verified on the board, resumable."""
    from edgecls.remote.boards import connect, get_board
    from edgecls.remote.deploy import deploy as deploy_artifact
    board = get_board(board_name, inventory)
    with connect(board, ssh_config=ssh_config, accept_new_host_key=accept_new_host_key) as ssh:
        result = deploy_artifact(artifact, board, ssh, log=lambda m: click.echo(m, err=True))
    what = "already there, verified" if result.reused else f"{result.files} files, {result.uploaded_bytes} bytes sent, verified"
    click.echo(f"deployed {artifact} to {board.name}:{result.remote_path} ({what})")
