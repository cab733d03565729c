"""Data-parallel baking: a real 2-process `accelerate launch` on CPU (gloo, DDP through accelerate's Accelerator)
matches a 1-process bake."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lm_eval_baking import bake, load_bake_record
from lm_eval_baking.core.parallel import SINGLE, Workers

from conftest import PIRATE, bake_flags, tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accelerate() -> str:
    return str(Path(sys.executable).with_name("accelerate"))


def test_workers_share_items_round_robin_and_put_results_back_in_order():
    items = list(range(7))
    assert SINGLE.map(lambda shard: [x * 10 for x in shard], items) == [x * 10 for x in items]
    assert Workers(rank=1, world=3).shard(items) == [1, 4]
    assert Workers(rank=0, world=3).shard(items) == [0, 3, 6]


def test_two_process_accelerate_bake_matches_one_process(tiny_model_dir, question_file, tmp_path):
    # batch_size 4 is the global batch: each of the 2 processes runs 2 trajectories per step. 9 training
    # answers make the last batch of each epoch a single answer, so one process has none and must still
    # join DDP's gradient all-reduce (at weight 0).
    config = tiny_config(tiny_model_dir, question_file, device="cpu", samples_per_question=1, epochs=3)
    single = bake(config, tmp_path / "single", progress=False)

    flags = ["--prompt", PIRATE, "--output", str(tmp_path / "ddp"), "--quiet", *bake_flags(config)]
    # --multi_gpu is accelerate's name for "one process per worker via torch.distributed"; with
    # --device cpu our processes join a gloo group instead of NCCL.
    launch = [_accelerate(), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
              "-m", "lm_eval_baking.cli", "bake", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("Baked adapter:") == 2  # both processes finish; only the main one wrote

    parallel_record = load_bake_record(tmp_path / "ddp")
    assert parallel_record["config"] == load_bake_record(single.output)["config"]
    # The training step went through accelerate's Accelerator: DDP over gloo for CPU processes.
    assert parallel_record["environment"]["engine"] == "MULTI_CPU"
    assert parallel_record["environment"]["processes"] == 2
    assert load_bake_record(single.output)["environment"]["engine"] == "single"
    # Sampling was shared out batch by batch with per-batch seeds: the same trajectories as one process.
    for part in ("train", "heldout"):
        ours = [json.loads(x)["answer_ids"] for x in (tmp_path / "ddp" / "data" / f"{part}.jsonl").read_text().splitlines()]
        theirs = [json.loads(x)["answer_ids"] for x in (single.output / "data" / f"{part}.jsonl").read_text().splitlines()]
        assert ours == theirs

    from safetensors.torch import load_file

    a = load_file(single.output / "adapter_model.safetensors")
    b = load_file(tmp_path / "ddp" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), key
    final = parallel_record["kl"]["final_per_token"]
    # The KL here is ~1e-4, so float noise from different batch shapes shows at the 1e-3 level.
    assert final == pytest.approx(single.final_kl.per_token, rel=1e-2)
    assert parallel_record["kl"]["unprompted_base"]["per_token"] == pytest.approx(single.reference_kl.per_token,
                                                                                  rel=1e-4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_fsdp_asked_on_cpu_processes_is_refused_in_one_line(tiny_model_dir, question_file, tmp_path):
    """accelerate 1.15 enables FSDP only for GPU-like processes; on CPU it would silently run DDP instead."""
    launch = [_accelerate(), "launch", "--use_fsdp", "--fsdp_version", "2", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), "-m", "lm_eval_baking.cli", "bake", "--prompt", PIRATE,
              "--model", str(tiny_model_dir), "--questions", str(question_file), "--device", "cpu",
              "--output", str(tmp_path / "fsdp"), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("lm-eval-baking: error:")]
    assert errors and all("asked for FSDP, but accelerate runs these processes as MULTI_CPU" in e for e in errors)
    assert not (tmp_path / "fsdp").exists()


def test_training_under_torch_fsdp2_over_gloo_matches_one_process():
    """FSDP itself on CPU: accelerate cannot select it there (test above), torch's FSDP2 can. The probe shards
    the base as accelerate's FSDP2 plugin would and runs PromptBaker's own steps, held-out KL and gathers."""
    probe = Path(__file__).resolve().parents[2] / "bench" / "fsdp2_cpu_probe.py"
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), str(probe)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("rank ")]
    assert len(lines) == 2 and all(line.endswith(": match") for line in lines), lines
