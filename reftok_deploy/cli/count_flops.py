"""python -m reftok_deploy.cli.count_flops [--preset tiny] [--size 256]: GFLOP per GOP of RefTok (version 2, version 3 with the
aligned reference features, version 3 with the motion search: RefTok3s, with the block refinement: RefTok3r, whose
Lucas-Kanade steps are elementwise ops and GridSamples, not counted) and its twin (see :mod:`reftok_deploy.model.flops`)."""

from __future__ import annotations

import argparse

from reftok_deploy.model.flops import gop_flops
from reftok_deploy.model.reftok import PRESETS, RefTok


def main() -> None:
    parser = argparse.ArgumentParser(description="GFLOP per GOP (encode + decode) of RefTok and its twin.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    cfg = PRESETS[args.preset]
    for name, cfg in (("RefTok", cfg), ("RefTok3", cfg.version3()),
                      ("RefTok3s", cfg.version3(aligned_reference=False, motion_search=True)),
                      ("RefTok3r", cfg.version3(aligned_reference=False, block_refinement=True)), ("twin", cfg.twin())):
        f = gop_flops(RefTok(cfg).eval(), args.size)
        print(f"{name:<9} {args.preset} {args.size}x{args.size}: encoder {f['encoder']:.2f} + decoder "
              f"{f['decoder']:.2f} + cost volume {f['cost_volume']:.2f} = {f['total']:.2f} GFLOP per GOP")


if __name__ == "__main__":
    main()
