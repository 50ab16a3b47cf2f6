"""`edgecls demo-model`: the bundled digits classifier and sample images, to try edgecls on."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo-model")
@click.option("--output", "-o", "out_dir", default="demo-build/model", show_default=True,
              type=click.Path(path_type=Path))
def demo_model(out_dir):
    """Train (or reuse) the bundled digits demo classifier and write sample images."""
    from edgecls.demo import ensure_demo_model, write_sample_images
    demo = ensure_demo_model(out_dir)
    click.echo(f"demo model: {demo.onnx} (validation top-1 {demo.val_accuracy:.3f}; also {demo.pt2.name})")
    for path, label in write_sample_images(demo, out_dir / "samples"):
        click.echo(f"sample: {path} (label {label})")
