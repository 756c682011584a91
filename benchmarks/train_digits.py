"""Train both digits models from scratch into a temporary cache; report time and accuracy.

Also counts the held-out images each model (and both jointly) classifies correctly with softmax
confidence >= 0.99, the pool the grids are drawn from (supplement I.1). Writes
``benchmarks/out/train_digits.json``.

    python benchmarks/train_digits.py
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from attrcli.data.digits import load_digits_split
from attrcli.models import create_model
from attrcli.models.digits import CONFIDENCE, RECIPES, train_digits_model
from attrcli.models.training import predict

OUT = Path(__file__).parent / "out" / "train_digits.json"


def main() -> dict:
    images, labels, _ = load_digits_split("heldout")
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_before": os.getloadavg()[0],
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "models": {},
    }
    confident = {}
    with tempfile.TemporaryDirectory() as cache:
        for name in RECIPES:
            start = time.perf_counter()
            process = time.process_time()
            record = train_digits_model(name, cache_dir=cache, force=True)
            adapter = create_model(name, cache_dir=cache)
            probs = predict(adapter.module, images, mean=adapter.mean, std=adapter.std)
            conf, pred = probs.max(dim=1)
            confident[name] = (pred == labels) & (conf >= CONFIDENCE)
            results["models"][name] = {
                "train_seconds": record["train_seconds"],
                "total_seconds": round(time.perf_counter() - start, 3),
                "cpu_seconds": round(time.process_time() - process, 3),
                "load_average_after": os.getloadavg()[0],
                "epochs": record["epochs"],
                "heldout_accuracy": record["heldout_accuracy"],
                "heldout_images": len(labels),
                f"correct_conf_{CONFIDENCE}": int(confident[name].sum()),
                "weights_hash": record["weights_hash"],
            }
            print(f"{name}: {record['train_seconds']:.1f} s, held-out accuracy "
                  f"{record['heldout_accuracy']:.4f}, confident {int(confident[name].sum())}/{len(labels)}")
    joint = int(torch.stack(list(confident.values())).all(dim=0).sum())
    results[f"joint_correct_conf_{CONFIDENCE}"] = joint
    print(f"both models correct with confidence >= {CONFIDENCE}: {joint}/{len(labels)}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print(f"wrote {OUT}")
    return results


if __name__ == "__main__":
    main()
