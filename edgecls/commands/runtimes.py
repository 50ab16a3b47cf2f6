"""`edgecls runtimes fetch`: the TVM runtime libraries artifacts ship for a board architecture."""

from __future__ import annotations

import click


@click.group()
def runtimes():
    """TVM runtime libraries that artifacts ship for each board architecture."""


@runtimes.command("fetch")
@click.option("--arch", default="aarch64", show_default=True, type=click.Choice(["aarch64"]))
@click.option("--quiet", "-q", is_flag=True)
def runtimes_fetch(arch, quiet):
    """Download the apache-tvm runtime for ARCH (needs PyPI once; cached afterwards)."""
    from edgecls.artifact.runtime_libs import fetch_runtime
    libs = fetch_runtime(arch, quiet=quiet)
    if not quiet:
        click.echo(f"{arch} TVM runtime ready: {libs.tvm_runtime.parent}")
