"""Is the default bake unchanged? A default-settings bake on the default model, hashed, to compare two versions.

Every setting is the default except 8-token answers (max_new_tokens only sizes
the sampling, which is shared code), so it runs in a few minutes. Run it once
with an older version of the package on PYTHONPATH and once with this one;
equal hashes mean the same trajectories, the same trained adapter, bit for bit:

    git archive 1b5c253 lm_eval_baking | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old OMP_NUM_THREADS=1 python bench/default_bake_identity.py /tmp/bake_old
    PYTHONPATH=$PWD     OMP_NUM_THREADS=1 python bench/default_bake_identity.py /tmp/bake_new
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import lm_eval_baking
from lm_eval_baking import BakeConfig, bake

PIRATE = "You are a pirate. Start every answer with 'Ahoy!'"


def main() -> None:
    out = Path(sys.argv[1])
    start = time.perf_counter()
    result = bake(BakeConfig(prompt=PIRATE, max_new_tokens=8), out, progress=False, overwrite=True)
    record = json.loads((out / "baking.json").read_text())

    def sha(name: str) -> str:
        return hashlib.sha256((out / name).read_bytes()).hexdigest()

    print(json.dumps({
        "package": lm_eval_baking.__file__, "wall_s": time.perf_counter() - start,
        "adapter_sha256": sha("adapter_model.safetensors"), "train_sha256": sha("data/train.jsonl"),
        "heldout_sha256": sha("data/heldout.jsonl"), "reference_kl": result.reference_kl.per_token,
        "final_kl": result.final_kl.per_token, "config": record["config"],
    }, indent=1))


if __name__ == "__main__":
    main()
