"""edgecls command line: parse, call one function, print. No logic lives here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from edgecls import __version__
from edgecls.errors import EdgeclsError, UsageError

targets_dir_option = click.option(
    "--targets-dir", envvar="EDGECLS_TARGETS", default=None, metavar="DIR",
    help="Extra folder(s) of target TOML files (also EDGECLS_TARGETS; ':'-separated).")


def _log(verbose: bool):
    from edgecls.report.console import console
    return (lambda msg: console.print(f"[dim]{msg}[/dim]", highlight=False)) if verbose else (lambda msg: None)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgecls")
def cli():
    """Take a trained image classifier to edge boards: compile with TVM, run, verify."""


@cli.group(invoke_without_command=True)
@targets_dir_option
@click.pass_context
def targets(ctx, targets_dir):
    """List known targets (board types)."""
    ctx.obj = {"targets_dir": targets_dir}
    if ctx.invoked_subcommand is None:
        from edgecls.report.console import targets_table
        from edgecls.targets import load_targets
        targets_table(load_targets(targets_dir))


@targets.command("show")
@click.argument("name")
@click.pass_context
def targets_show(ctx, name):
    """Show one target: TVM target, cores, cross compiler, runtimes."""
    from edgecls.report.console import target_detail
    from edgecls.targets import get_target
    target_detail(get_target(name, ctx.obj["targets_dir"]))


def _preprocess(mean, std, channel_order, preprocess_file):
    if preprocess_file:
        from edgecls.data import Preprocess
        try:
            return Preprocess.from_dict(json.loads(Path(preprocess_file).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"--preprocess {preprocess_file}: {exc}") from None
    if mean or std or channel_order:  # overrides on top of the defaults for the input shape
        return {k: v for k, v in (("mean", mean), ("std", std), ("channel_order", channel_order)) if v}
    return None


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{option} '{text}' is not a comma-separated list of numbers") from None


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "-t", required=True, help="Target name (see `edgecls targets`) or a .toml file.")
@click.option("--output", "-o", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Artifact directory to create.")
@click.option("--layout", type=click.Choice(["auto", "NCHW", "NHWC"]), default="auto", show_default=True,
              help="Conv data layout; auto uses the target's preferred layout.")
@click.option("--input-shape", default=None, metavar="N,C,H,W", help="Static input shape, e.g. 1,3,224,224.")
@click.option("--labels", type=click.Path(path_type=Path), default=None, help="Class names, one per line.")
@click.option("--mean", default=None, metavar="R,G,B", help="Per-channel mean in 0..1 pixel scale.")
@click.option("--std", default=None, metavar="R,G,B", help="Per-channel std in 0..1 pixel scale.")
@click.option("--channel-order", type=click.Choice(["RGB", "BGR"]), default=None)
@click.option("--preprocess", "preprocess_file", type=click.Path(path_type=Path), default=None,
              help="Preprocessing as JSON (size, mean, std, channel_order, layout).")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--no-verify", is_flag=True, help="Skip running the artifact on the reference input.")
@click.option("--verbose", "-v", is_flag=True, help="Show every stage and graph pass.")
@targets_dir_option
def compile(model, target, out_dir, layout, input_shape, labels, mean, std, channel_order,
            preprocess_file, force, no_verify, verbose, targets_dir):
    """Compile MODEL (.onnx, .pt2, TorchScript) for a target into a runnable, verified artifact."""
    from edgecls.load import parse_shape
    from edgecls.pipeline import CompileRequest, compile_artifact
    from edgecls.report.console import console
    req = CompileRequest(
        model=model, target=target, out_dir=out_dir, layout=layout, input_shape=parse_shape(input_shape),
        labels=labels, force=force, targets_dir=targets_dir, verify=not no_verify,
        preprocess=_preprocess(_floats(mean, "--mean"), _floats(std, "--std"), channel_order, preprocess_file))
    with console.status(f"compiling {model} for {target}", spinner="dots") if not verbose else _null():
        out = compile_artifact(req, log=_log(verbose))
    console.print(f"[green]artifact[/green] {out}  (inspect it: edgecls inspect {out})")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def inspect(artifact, as_json):
    """Show what is inside an artifact and how it was made."""
    from edgecls.artifact.manifest import read_manifest, verify_files
    from edgecls.report.console import inspect_view
    manifest = read_manifest(artifact)
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    inspect_view(manifest, verify_files(artifact, manifest))


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--input", "-i", "input_path", type=click.Path(path_type=Path), default=None,
              help="An image (preprocessed as the manifest says) or a .npy tensor; "
                   "default: the artifact's reference input.")
@click.option("--emulate", is_flag=True, help="Run a foreign-arch artifact under qemu on this machine.")
@click.option("--topk", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--threads", default=None, type=click.IntRange(1, 256), help="TVM runtime threads.")
@click.option("--save-output", type=click.Path(path_type=Path), default=None, help="Write the output tensor (.npy).")
@click.option("--json", "as_json", is_flag=True, help="Print the runner's report as JSON.")
def run(artifact, input_path, emulate, topk, threads, save_output, as_json):
    """Run an artifact on this machine (natively, or under qemu with --emulate) and print top-k."""
    from edgecls.artifact.execute import predict
    from edgecls.report.console import topk_view
    report = predict(artifact, input_path, emulate=emulate, topk=topk, save_output=save_output, threads=threads)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        topk_view(report)


@cli.command("demo-model")
@click.option("--output", "-o", "out_dir", default="demo-build/model", show_default=True,
              type=click.Path(path_type=Path))
def demo_model(out_dir):
    """Train (or reuse) the bundled digits demo classifier and write sample images."""
    from edgecls.demo import ensure_demo_model, write_sample_images
    demo = ensure_demo_model(out_dir)
    click.echo(f"demo model: {demo.onnx} (validation top-1 {demo.val_accuracy:.3f}; also {demo.pt2.name})")
    for path, label in write_sample_images(demo, out_dir / "samples"):
        click.echo(f"sample: {path} (label {label})")


@cli.group()
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
