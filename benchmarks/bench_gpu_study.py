"""Benchmark: one model's study at paper scale on a GPU, extrapolated to the paper's ImageNet study.

The paper (supplement H.1) computes 2,000 attributions per method, layer and setting: GridPG on
500 grid images of 2×2 distinct classes (every cell a target), DiFull and DiPart on 1,000 corner
grids (the two same-class corners). This runs ``attrcli attribute`` as a user would on
``--grids`` random normalised 448-pixel grids per variant (timing does not depend on the
content; nothing downloads: ``--weights random``), with attrcli's presets (intgrad 20 steps,
RISE 1000 masks, occlusion at the paper's K/s per layer, every channel for Score-CAM and
Ablation-CAM), all three layers, one call per setting, on ``--device`` (default cuda), and
reports per call attributions per second and the extrapolated time of the paper's study for
the model (3 settings × 3 layers × the methods, 2,000 attributions each). The first call of a
process pays CUDA start-up: a small untimed call goes first.

    python benchmarks/bench_gpu_study.py --model vgg11 --grids 16 --device cuda --out-dir OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

METHODS = "grad,guided-backprop,ixg,intgrad,gradcam,gradcam++,layercam,ablationcam,scorecam,occlusion,rise"
SETTINGS = {"gridpg": "distinct", "difull": "corners", "dipart": "corners"}
PAPER_ATTRIBUTIONS = 2000  # per model, setting, layer and method (supplement H.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg11")
    parser.add_argument("--grids", type=int, default=16, help="grid images per variant")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--layers", default="input,middle,final")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args(argv)

    import torch

    import _baseline_work
    from bench_study import cli
    from attrcli.models import create_model

    adapter = create_model(args.model, weights="random")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_gpu_study_") as tmp:
        work = Path(tmp)
        grids = {v: _baseline_work.random_grid_file(work / f"{v}.h5", adapter, variant=v, count=args.grids)
                 for v in set(SETTINGS.values())}

        def call(setting: str, layers: str, methods: str) -> list[dict]:
            return cli(["attribute", "--grids", str(grids[SETTINGS[setting]]), "--setting", setting,
                        "--model", args.model, "--weights", "random", "--layer", layers, "--method", methods,
                        "--device", args.device, "--batch-size", str(args.batch_size), "--precision", args.precision,
                        "--cache-dir", str(work / "cache"), "--force", "--quiet"])

        call("gridpg", "final", "grad")  # untimed: CUDA context, kernels, imports
        for setting in args.settings.split(","):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            results = call(setting, args.layers, args.methods)
            seconds = time.perf_counter() - start
            targets = 4 if setting == "gridpg" else 2
            keys = len(results)
            attributions = args.grids * targets * keys
            paper_s = seconds / attributions * PAPER_ATTRIBUTIONS * keys
            rows.append({"setting": setting, "keys": keys, "grids": args.grids, "seconds": seconds,
                         "attributions_per_s": attributions / seconds, "paper_seconds": paper_s})
            print(f"{args.model} {setting}: {keys} keys, {attributions} attributions in {seconds:.1f} s "
                  f"({attributions / seconds:.1f}/s); the paper's 2,000 per key: {paper_s / 60:.1f} min", flush=True)
    total = sum(r["paper_seconds"] for r in rows)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    report = {"model": args.model, "device": device, "precision": args.precision, "batch_size": args.batch_size,
              "rows": rows, "paper_study_seconds": total}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"bench_gpu_study_{args.model}_{args.precision}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.model} on {device} ({args.precision}): the paper's study of this model extrapolated to "
          f"{total / 3600:.2f} h ({len(rows)} settings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
