#!/usr/bin/env python
"""Write the scikit-learn digits (1797 real labelled images) as an ImageFolder of PNGs.

    python calibration/make_digits_imagefolder.py OUT_DIR [--size 32] [--mode RGB|L]

The result (`OUT_DIR/<digit>/<index>.png`) is what `--calib`/`--val` style options expect,
so the ImageFolder path can be exercised end to end with real data and no download.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from edgecls.data import DEMO_PREPROCESS, load_image_folder, write_digits_image_folder
from edgecls.errors import EdgeclsError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", help="directory to create (must not exist or be empty)")
    ap.add_argument("--size", type=int, default=DEMO_PREPROCESS.size[0],
                    help="side length in pixels (default: %(default)s, what the demo model expects)")
    ap.add_argument("--mode", choices=("RGB", "L"), default="RGB", help="PNG colour mode (default: RGB)")
    args = ap.parse_args(argv)
    try:
        out = write_digits_image_folder(args.out_dir, size=args.size, mode=args.mode)
        # Read it back through the same loader users' folders go through, as a self-check.
        pre = dataclasses.replace(DEMO_PREPROCESS, size=(args.size, args.size))
        ds = load_image_folder(out, pre)
        print(f"wrote {len(ds)} images in {len(ds.classes)} classes to {out}")
    except EdgeclsError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
