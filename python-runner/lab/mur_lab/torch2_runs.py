"""python -m mur_lab.torch2_runs DIR: the cross-framework matrix's torch runs of
optimizers that the matrix's own torch lacks (torch.optim.Adafactor: torch >= 2.5,
Muon: >= 2.9), made by the torch 2.x venv's python (`make torch2`).

DIR holds problem.npz (the matrix's initial weights and batches) and jobs.json
([{"opt", "config"}, ...]); each job is frameworks.run_torch on that problem,
written to DIR/run<i>.npz, and DIR/meta.json says which torch made them. The
caller (frameworks.torch2_runs) owns DIR and removes it.
"""

import json
import sys
from pathlib import Path

import numpy as np


def main(argv=None):
    (d,) = sys.argv[1:] if argv is None else argv
    d = Path(d)
    import torch

    from mur_lab import frameworks as fw

    torch.set_num_threads(1)
    with np.load(d / "problem.npz") as z:
        prob = {
            "params": [z[f"arr_{k}"].copy() for k in range(4)],
            "x": z["x"].copy(),
            "y": z["y"].copy(),
            "batch": int(z["batch"]),
            "steps": int(z["steps"]),
        }
    for i, job in enumerate(json.loads((d / "jobs.json").read_text())):
        cls = fw.TORCH_CLASSES.get(job["opt"])
        if cls and not hasattr(torch.optim, cls):
            raise SystemExit(f"torch {torch.__version__} has no torch.optim.{cls}")
        np.savez(d / f"run{i}.npz", *fw.run_torch(prob, job["opt"], job["config"]))
    (d / "meta.json").write_text(json.dumps({"torch": torch.__version__.split("+")[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
