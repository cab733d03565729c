"""Benchmark: our bake against the reference Prompt Baking method, side by side, in one run.

Both train a fresh LoRA adapter of the same shape and seed on the SAME
trajectories (sampled once with our sampler), in the same batch order, and
both are scored by the same exact fp32 held-out KL every few steps. The
reference is a faithful re-implementation of the authors' loop: teacher
forward every step through the adapter-disabled model with the prompt, logits
at every position, full-vocabulary KL, every batch padded to the longest
trajectory of the whole set, fp32, nothing cached.

Also measured in the same run:
- a matmul probe: the machine's bf16 and fp32 GEMM ceilings (2048² matmuls);
- our training throughput as a fraction of the bf16 ceiling, with training
  FLOPs = 6 x (all model parameters) x (trained answer tokens);
- trajectory sampling: our batched sampler against a plain loop that calls
  `model.generate` once per (question, sample);
- an ablation of our levers (bf16 autocast, length bucketing, top-k teacher
  captured while sampling, chunked KL), answer tokens/s and memory each;
- a third training run, ours with the captured top-64 teacher, against the
  same target;
- a torch.profiler profile of a few steps of each method: time per phase
  (teacher forward, student forward + KL, backward, optimiser) and per
  operator family, and the GFLOP/s the matmuls reach.

Writes bench/results/reference_vs_ours.json and prints Markdown tables.

    python bench/reference_vs_ours.py                 # the pirate bake on the default model
    python bench/reference_vs_ours.py --quick         # a tiny random model: a smoke run of every part
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import resource
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from tqdm.auto import tqdm

from lm_eval_baking import BakeConfig, PromptBaker
from lm_eval_baking.training.baker import attach_lora
from lm_eval_baking.core.batching import autocast, teacher_mode
from lm_eval_baking.core.models import load_model, load_tokenizer, resolve_model
from lm_eval_baking.core.questions import load_questions, split_questions
from lm_eval_baking.core.chat import encode_like_lm_eval
from lm_eval_baking.core.prompts import as_bake_prompt
from lm_eval_baking.core.sampling import sample_trajectories

PIRATE = "You are a pirate. Start every answer with 'Ahoy!'"
# The top-k lever: teacher top-k log-probs captured while sampling, then no teacher forward in training.
CAPTURED_TOP_K = 64
LEVER_TOP_K = {"top_k": CAPTURED_TOP_K, "cache_teacher": True}

# Profiler labels for the phases of one training step, the same for both methods.
PHASE_TEACHER = "teacher forward"
PHASE_STUDENT = "student forward + KL"
PHASE_BACKWARD = "backward"
PHASE_OPTIMIZER = "optimizer step"
PHASES = (PHASE_TEACHER, PHASE_STUDENT, PHASE_BACKWARD, PHASE_OPTIMIZER)

# Operator families in the profile: where CPU time goes inside the phases.
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation"}


# --------------------------------------------------------------------------- measurement helpers

class PeakRSS:
    """Peak resident memory of this process while the block runs, sampled every 20 ms (psutil).

    ru_maxrss is a lifetime peak, so it cannot tell two methods in one process
    apart; this reports the peak inside the block and its rise over the RSS
    at the block's start.
    """

    def __enter__(self):
        import psutil

        self._process = psutil.Process()
        self.start_mb = self._process.memory_info().rss / 2**20
        self.peak_mb = self.start_mb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.02):
            self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / 2**20)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / 2**20)

    @property
    def rise_mb(self) -> float:
        return self.peak_mb - self.start_mb


class Clock:
    """Accumulates training time only: paused while held-out KL is measured."""

    def __init__(self):
        self.seconds = 0.0
        self._since = None

    def start(self):
        self._since = time.perf_counter()

    def pause(self):
        self.seconds += time.perf_counter() - self._since
        self._since = None


def matmul_ceiling(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n x n x n matmul in `dtype` (best of `repeats`, after a warm-up)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


# --------------------------------------------------------------------------- the reference method

def reference_train(model, tokenizer, config: BakeConfig, train, after_step, max_steps: int | None = None) -> None:
    """The authors' loop, faithfully: fp32, teacher recomputed every step; at most `max_steps` steps an epoch.

    Differences from ours are the point: full-sequence logits (LM head on every
    position), every batch padded to the longest trajectory of the whole
    training set, no autocast, no teacher cache. Optimiser, learning rate,
    batch size and batch order are ours, so only the method differs.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)
    pad = tokenizer.pad_token_id

    prompt = as_bake_prompt(config.prompt, tokenizer)

    def prefix(question, prompted):
        return encode_like_lm_eval(tokenizer, prompt.context(tokenizer, question, prompted=prompted))

    rows = [(prefix(t.question, True), prefix(t.question, False), t.answer_ids) for t in train]
    teacher_width = max(len(p) + len(a) for p, _, a in rows)
    student_width = max(len(p) + len(a) for _, p, a in rows)

    def padded(sequences, width):
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(sequences):
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        return ids, mask

    def answer_mask(prefix_lengths, answer_lengths, width):
        positions = torch.zeros((len(prefix_lengths), width), dtype=torch.bool)
        for row, (p, a) in enumerate(zip(prefix_lengths, answer_lengths)):
            positions[row, p - 1:p + a - 1] = True
        return positions

    for epoch in range(1, config.epochs + 1):
        model.train()
        order = list(range(len(train)))
        random.Random(config.seed * 1000 + epoch).shuffle(order)  # the same order as PromptBaker.batches
        batches = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        for step, batch in enumerate(tqdm(batches[:max_steps], desc=f"reference epoch {epoch}", unit="step"), 1):
            t_pre, s_pre, answers = zip(*(rows[i] for i in batch))
            t_ids, t_mask = padded([p + a for p, a in zip(t_pre, answers)], teacher_width)
            s_ids, s_mask = padded([p + a for p, a in zip(s_pre, answers)], student_width)
            lengths = [len(a) for a in answers]
            t_pos = answer_mask([len(p) for p in t_pre], lengths, teacher_width)
            s_pos = answer_mask([len(p) for p in s_pre], lengths, student_width)
            with record_function(PHASE_TEACHER), torch.no_grad(), teacher_mode(model):
                teacher_logits = model(input_ids=t_ids, attention_mask=t_mask).logits[t_pos]
            with record_function(PHASE_STUDENT):
                student_logits = model(input_ids=s_ids, attention_mask=s_mask).logits[s_pos]
                teacher_logp = torch.log_softmax(teacher_logits, dim=-1)
                student_logp = torch.log_softmax(student_logits, dim=-1)
                loss = (teacher_logp.exp() * (teacher_logp - student_logp)).sum() / sum(lengths)
            with record_function(PHASE_BACKWARD):
                loss.backward()
            with record_function(PHASE_OPTIMIZER):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            after_step(step, loss.item())
        model.eval()


# --------------------------------------------------------------------------- one training run, either method

def train_and_track(method: str, model_path: str, config: BakeConfig, train, heldout, eval_every: int) -> dict:
    """Train a fresh LoRA with `method` ("reference" or "ours", with `config`'s levers), measuring held-out KL
    every `eval_every` steps (off the clock)."""
    model, tokenizer = load_model(model_path)
    model = attach_lora(model, config)
    evaluator = PromptBaker(model, tokenizer, config, progress=False)  # its heldout_kl is the shared yardstick
    clock, curve = Clock(), []
    n_steps = math.ceil(len(train) / config.batch_size) * config.epochs
    done = {"steps": 0}

    def after_step(step, _losses):
        done["steps"] += 1
        if done["steps"] % eval_every == 0 or done["steps"] == n_steps:
            clock.pause()
            model.eval()
            curve.append({"step": done["steps"], "train_s": clock.seconds,
                          "heldout_kl": evaluator.heldout_kl(heldout).per_token})
            model.train()
            clock.start()

    gc.collect()
    with PeakRSS() as memory:
        clock.start()
        if method == "reference":
            reference_train(model, tokenizer, config, train, after_step)
        else:
            baker = PromptBaker(model, tokenizer, config)
            for epoch in range(1, config.epochs + 1):
                baker.train_epoch(train, epoch, after_step=after_step)
        clock.pause()
    tokens = sum(len(t.answer_ids) for t in train) * config.epochs
    return {
        "method": method, "train_s": clock.seconds, "answer_tokens": tokens,
        "tokens_per_s": tokens / clock.seconds, "final_heldout_kl": curve[-1]["heldout_kl"],
        "peak_rss_mb": memory.peak_mb, "rss_rise_mb": memory.rise_mb, "curve": curve,
        "n_params": sum(p.numel() for p in model.get_base_model().parameters()),
    }


def time_to(curve: list[dict], target: float) -> float | None:
    """Training seconds at the first evaluation whose held-out KL is at or below `target`."""
    return next((point["train_s"] for point in curve if point["heldout_kl"] <= target * (1 + 1e-9)), None)


def our_training_step(baker: PromptBaker, batch) -> None:
    """One optimiser step of ours, its phases labelled for the profiler (the labels cost nothing unprofiled)."""
    with record_function(PHASE_STUDENT):  # our teacher runs inside compute_loss: the profile subtracts it
        loss = baker.compute_loss(batch)
    with record_function(PHASE_BACKWARD):
        loss.backward()
    with record_function(PHASE_OPTIMIZER):
        baker.optimizer.step()
        baker.optimizer.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- levers

def ablation(model_path: str, base: BakeConfig, train, steps: int) -> list[dict]:
    """Steps/s and memory of our training step with each lever switched, on the same batches.

    Each variant trains a fresh adapter for `steps` steps after one warm-up
    step. `train` carries the teacher top-k captured while sampling, which
    only the cached-teacher variant uses.
    """
    variants = [
        ("ours (default: bf16, batch-max padding, teacher every step, full vocab)", {}),
        ("fp32 instead of bf16 autocast", {"precision": "fp32"}),
        ("+ length bucketing", {"length_bucketing": True}),
        (f"+ top-{CAPTURED_TOP_K} KL, teacher every step", {"top_k": CAPTURED_TOP_K}),
        (f"+ top-{CAPTURED_TOP_K} KL, teacher captured while sampling", LEVER_TOP_K),
        ("+ chunked KL (64 positions)", {"kl_chunk_size": 64}),
    ]
    rows = []
    for name, change in tqdm(variants, desc="levers", unit="variant"):
        config = replace(base, **change)
        model, tokenizer = load_model(model_path)
        baker = PromptBaker(attach_lora(model, config), tokenizer, config, progress=False)
        batches = baker.batches(train, 1)[:steps + 1]
        baker.model.train()
        our_training_step(baker, batches[0])  # warm-up
        gc.collect()
        with PeakRSS() as memory:
            start = time.perf_counter()
            for batch in batches[1:]:
                our_training_step(baker, batch)
            seconds = time.perf_counter() - start
        tokens = sum(len(t.answer_ids) for b in batches[1:] for t in b)
        rows.append({"variant": name, "settings": change, "steps": len(batches) - 1, "seconds": seconds,
                     "tokens_per_s": tokens / seconds, "rss_rise_mb": memory.rise_mb})
        del baker, model
    default = rows[0]["tokens_per_s"]
    for row in rows:
        row["speed_vs_default"] = row["tokens_per_s"] / default
    return rows


# --------------------------------------------------------------------------- profile

def profile_steps(model_path: str, config: BakeConfig, train, steps: int) -> dict:
    """Where a training step's CPU time goes, by phase and by operator family: the reference, ours, and
    ours with the captured top-k teacher.

    torch.profiler records `steps` steps of each method after one untimed
    warm-up step, on the same batches. Phases are labelled with
    record_function; operator families are read from each op's self time,
    and the matmul ops' FLOP counts give their achieved GFLOP/s, to compare
    with the matmul ceilings measured in the same run.
    """
    runs = {"reference": replace(config, precision="fp32"), "ours": config,
            f"ours + top-{CAPTURED_TOP_K} captured": replace(config, **LEVER_TOP_K)}
    results = {}
    for name, method_config in runs.items():
        method = "reference" if name == "reference" else "ours"
        model, tokenizer = load_model(model_path)
        model = attach_lora(model, method_config)
        profiler = profile(activities=[ProfilerActivity.CPU], with_flops=True)
        if method == "reference":
            # Started after the first step, a warm-up; the reference stops itself after steps + 1.
            reference_train(model, tokenizer, method_config, train,
                            lambda step, _loss: profiler.start() if step == 1 else None, max_steps=steps + 1)
        else:
            baker = PromptBaker(model, tokenizer, method_config, progress=False)
            # Label the teacher's forward without touching the library: the step module's teacher_logits (the
            # teacher run in every step) and the baker's teacher (the top-k cache, filled while sampling here).
            for owner, attribute in ((baker.bake_step, "teacher_logits"), (baker, "teacher")):
                setattr(owner, attribute, labelled(getattr(owner, attribute), PHASE_TEACHER))
            model.train()
            for index, batch in enumerate(baker.batches(train, 1)[:steps + 1]):
                our_training_step(baker, batch)
                if index == 0:  # the first step is a warm-up
                    profiler.start()
        profiler.stop()
        results[name] = _profile_summary(profiler.key_averages(), steps, nested_teacher=method == "ours")
        del model
        gc.collect()
    return results


def labelled(function, label: str):
    """`function`, its calls recorded under `label` in a torch.profiler profile."""
    def run(*args, **kwargs):
        with record_function(label):
            return function(*args, **kwargs)
    return run


def _profile_summary(events, steps: int, *, nested_teacher: bool) -> dict:
    by_name = {event.key: event for event in events}
    phase_ms = {phase: by_name[phase].cpu_time_total / 1e3 / steps if phase in by_name else 0.0 for phase in PHASES}
    if nested_teacher:  # our teacher runs inside compute_loss, so inside the student label
        phase_ms[PHASE_STUDENT] -= phase_ms[PHASE_TEACHER]
    step_ms = sum(phase_ms.values())
    families = {"matmul": 0.0, "attention": 0.0, "softmax / log-softmax": 0.0, "other ops": 0.0}
    matmul_flops = 0
    for event in events:
        if event.key in PHASES or event.key.startswith("ProfilerStep"):
            continue
        ms = event.self_cpu_time_total / 1e3 / steps
        if event.key in MATMUL_OPS:
            families["matmul"] += ms
            matmul_flops += event.flops / steps
        elif "scaled_dot_product" in event.key:
            families["attention"] += ms
        elif "softmax" in event.key:
            families["softmax / log-softmax"] += ms
        else:
            families["other ops"] += ms
    return {
        "step_ms": step_ms,
        "phase_ms": phase_ms,
        "phase_share": {phase: ms / step_ms for phase, ms in phase_ms.items()},
        "family_ms": families,
        "family_share": {family: ms / sum(families.values()) for family, ms in families.items()},
        "matmul_gflops": matmul_flops / 1e9 / (families["matmul"] / 1e3) if families["matmul"] else None,
    }


# --------------------------------------------------------------------------- sampling

def sampling_comparison(model, tokenizer, prompt, questions, samples: int, max_new_tokens: int, dtype) -> dict:
    """Answer tokens/s: our batched sampler vs one `generate` call per (question, sample), both with `prompt`."""
    with autocast(model.device, dtype):
        start = time.perf_counter()
        ours = sample_trajectories(model, tokenizer, questions, system_prompt=prompt, samples_per_question=samples,
                                   max_new_tokens=max_new_tokens, batch_size=64, seed=0,
                                   desc="sampling: ours (batched)")
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        sample_trajectories(model, tokenizer, questions, system_prompt=prompt, samples_per_question=samples,
                            max_new_tokens=max_new_tokens, batch_size=64, seed=0, capture_top_k=CAPTURED_TOP_K,
                            desc=f"sampling: ours + top-{CAPTURED_TOP_K} capture")
        capture_s = time.perf_counter() - start
        torch.manual_seed(0)
        loop_tokens, start = 0, time.perf_counter()
        for question in tqdm(questions, desc="sampling: plain generate loop", unit="question"):
            context = as_bake_prompt(prompt, tokenizer).context(tokenizer, question.text)
            ids = torch.tensor([encode_like_lm_eval(tokenizer, context)])
            for _ in range(samples):
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                                     top_p=1.0, temperature=1.0, max_new_tokens=max_new_tokens,
                                     pad_token_id=tokenizer.pad_token_id)
                answer = out[0, ids.shape[1]:].tolist()
                if tokenizer.eos_token_id in answer:
                    answer = answer[:answer.index(tokenizer.eos_token_id) + 1]
                loop_tokens += len(answer)
        loop_s = time.perf_counter() - start
    ours_tokens = sum(len(t.answer_ids) for t in ours)
    return {
        "questions": len(questions), "samples_per_question": samples, "max_new_tokens": max_new_tokens,
        "ours": {"seconds": ours_s, "tokens": ours_tokens, "tokens_per_s": ours_tokens / ours_s},
        "ours_with_top_k_capture": {"seconds": capture_s, "tokens": ours_tokens, "tokens_per_s": ours_tokens / capture_s,
                                    "top_k": CAPTURED_TOP_K},
        "plain_loop": {"seconds": loop_s, "tokens": loop_tokens, "tokens_per_s": loop_tokens / loop_s},
        "speedup": (ours_tokens / ours_s) / (loop_tokens / loop_s),
    }


# --------------------------------------------------------------------------- main

def tiny_model(directory: Path) -> str:
    """A 2-layer random Llama with the default model's tokenizer (the tests' tiny model), for --quick."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("default"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         initializer_range=0.1, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def chosen_prompt(args, model_path: str) -> tuple:
    """The prompt to bake and the question pool: the pirate on the built-in questions, a system prompt from
    --prompt-file, or --fewshot-task's k-shot chat turns (the fewest shots of at least --min-prompt-tokens
    tokens) on the task's own questions."""
    if args.prompt_file:
        return args.prompt_file.read_text(), load_questions("builtin")
    if not args.fewshot_task:
        return PIRATE, load_questions("builtin")
    from lm_eval_baking.core.questions import Question
    from lm_eval_baking.evals.task_prompts import build_task_prompt, load_task

    tokenizer = load_tokenizer(model_path)  # only the prompt's length is needed here, not the weights
    task = load_task(args.fewshot_task)
    # The questions are the task's evaluated docs: a bench, not an evaluation, and the small arithmetic
    # tasks have too few other docs for a bake of 256 answers.
    questions = [Question(text=task.doc_to_text(doc)) for doc in task.eval_docs]
    for shots in range(8, 400, 4):
        built = build_task_prompt(args.fewshot_task, "chat", num_fewshot=shots, task=task, own_questions=False)
        if prompt_tokens(built.prompt, tokenizer) >= args.min_prompt_tokens:
            return built.prompt, questions
    raise SystemExit(f"{args.fewshot_task}: no few-shot prompt of {args.min_prompt_tokens} tokens")


def prompt_tokens(prompt, tokenizer) -> int:
    """Tokens the prompt adds to a question's context (template included)."""
    bake_prompt = as_bake_prompt(prompt, tokenizer)
    return (len(encode_like_lm_eval(tokenizer, bake_prompt.context(tokenizer, "?")))
            - len(encode_like_lm_eval(tokenizer, bake_prompt.context(tokenizer, "?", prompted=False))))


def describe_prompt(args, prompt, tokenizer) -> dict:
    kind = "fewshot_chat_turns" if args.fewshot_task else "system_prompt"
    return {"kind": kind, "source": str(args.prompt_file or args.fewshot_task or "pirate"),
            "turns": len(prompt) if isinstance(prompt, list) else 1, "tokens": prompt_tokens(prompt, tokenizer)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="'default', a HF id or a model directory")
    parser.add_argument("--quick", action="store_true", help="a tiny random model and small sizes: a smoke run")
    parser.add_argument("--train-questions", type=int, default=256)
    parser.add_argument("--heldout-questions", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--eval-every", type=int, default=4, help="steps between held-out KL measurements")
    parser.add_argument("--sampling-questions", type=int, default=120,
                        help="questions for the sampler comparison (x --sampling-samples answers each); 0 skips it")
    parser.add_argument("--sampling-samples", type=int, default=2)
    parser.add_argument("--ablation-steps", type=int, default=8, help="timed steps per lever variant; 0 skips")
    parser.add_argument("--profile-steps", type=int, default=4, help="profiled steps per method; 0 skips")
    parser.add_argument("--prompt-file", type=Path, help="bake this system prompt (a text file) instead of the pirate")
    parser.add_argument("--fewshot-task", help="bake this lm_eval task's few-shot examples as chat turns, on its "
                                               "own questions, instead of the pirate")
    parser.add_argument("--min-prompt-tokens", type=int, default=1000,
                        help="with --fewshot-task: the fewest shots whose prompt has at least this many tokens")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "reference_vs_ours.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.quick:
        args.train_questions, args.heldout_questions, args.max_new_tokens = 16, 8, 8
        args.eval_every, args.sampling_questions, args.ablation_steps = 2, min(args.sampling_questions, 8), 2
        args.profile_steps = min(args.profile_steps, 2)
        model_path = tiny_model(Path(tempfile.mkdtemp(prefix="bench-tiny-")))
    else:
        model_path = resolve_model(args.model)

    prompt, questions = chosen_prompt(args, model_path)
    config = BakeConfig(prompt=prompt, model=model_path, max_new_tokens=args.max_new_tokens, epochs=args.epochs)
    train_questions, heldout_questions = split_questions(questions, config.heldout_fraction, config.seed)
    train_questions, heldout_questions = train_questions[:args.train_questions], heldout_questions[:args.heldout_questions]

    print(f"threads {torch.get_num_threads()}; probing matmul ceilings")
    ceilings = {"bf16_gflops": matmul_ceiling(torch.bfloat16), "fp32_gflops": matmul_ceiling(torch.float32),
                "matmul": "2048 x 2048 x 2048, best of 5"}

    model, tokenizer = load_model(model_path)
    with autocast(model.device, config.autocast_dtype):  # the trajectories both methods train on, sampled once
        train = sample_trajectories(model, tokenizer, train_questions, system_prompt=prompt,
                                    max_new_tokens=config.max_new_tokens, batch_size=config.generation_batch_size,
                                    seed=config.seed, desc="sampling training answers", capture_top_k=CAPTURED_TOP_K)
        heldout = sample_trajectories(model, tokenizer, heldout_questions, system_prompt=prompt,
                                      max_new_tokens=config.max_new_tokens, batch_size=config.generation_batch_size,
                                      seed=config.seed + 1, desc="sampling held-out answers")
    sampling = None
    if args.sampling_questions:
        pool = (train_questions + heldout_questions)[:args.sampling_questions]
        sampling = sampling_comparison(model, tokenizer, prompt, pool, args.sampling_samples, args.max_new_tokens,
                                       config.autocast_dtype)
    del model
    gc.collect()

    # fp32 for the reference (its precision), our defaults for ours.
    reference = train_and_track("reference", model_path, replace(config, precision="fp32"), train, heldout,
                                args.eval_every)
    ours = train_and_track("ours", model_path, config, train, heldout, args.eval_every)
    ours_top_k = train_and_track("ours", model_path, replace(config, **LEVER_TOP_K), train, heldout, args.eval_every)
    target = reference["final_heldout_kl"]
    for run in (reference, ours, ours_top_k):
        run["time_to_target_s"] = time_to(run["curve"], target)
    # 6 x parameters x tokens: forward + backward of every weight per trained answer token, the usual
    # approximation (it ignores the teacher forward and the prefix positions, which also cost compute).
    flops = 6 * ours["n_params"] * ours["tokens_per_s"]
    ratios = {
        "throughput_ours_over_reference": ours["tokens_per_s"] / reference["tokens_per_s"],
        "time_to_target_ours_over_reference": (ours["time_to_target_s"] / reference["time_to_target_s"]
                                               if ours["time_to_target_s"] else None),
        "final_kl_ours_over_reference": ours["final_heldout_kl"] / reference["final_heldout_kl"],
        "peak_rss_rise_ours_over_reference": ours["rss_rise_mb"] / reference["rss_rise_mb"]
        if reference["rss_rise_mb"] > 0 else None,
        "ours_fraction_of_bf16_ceiling": flops / 1e9 / ceilings["bf16_gflops"],
        "throughput_ours_top_k_over_reference": ours_top_k["tokens_per_s"] / reference["tokens_per_s"],
        "time_to_target_ours_top_k_over_reference": (ours_top_k["time_to_target_s"] / reference["time_to_target_s"]
                                                     if ours_top_k["time_to_target_s"] else None),
        "final_kl_ours_top_k_over_reference": ours_top_k["final_heldout_kl"] / reference["final_heldout_kl"],
    }
    levers = ablation(model_path, config, train, args.ablation_steps) if args.ablation_steps else []
    # Last: the profiler's event buffers raise this process's resident memory for good.
    step_profile = profile_steps(model_path, config, train, args.profile_steps) if args.profile_steps else None

    report = {
        "model": model_path, "quick": args.quick, "threads": torch.get_num_threads(),
        "prompt": describe_prompt(args, prompt, tokenizer),
        "sizes": {"train": len(train), "heldout": len(heldout), "max_new_tokens": config.max_new_tokens,
                  "epochs": config.epochs, "batch_size": config.batch_size, "eval_every": args.eval_every},
        "config": asdict(config), "ceilings": ceilings,
        "flops_model": "6 x all model parameters (LoRA'd base, tied embedding counted once) x trained answer tokens",
        "target_heldout_kl": target, "reference": reference, "ours": ours,
        "ours_top_k": {**ours_top_k, "levers": LEVER_TOP_K}, "ratios": ratios,
        "sampling": sampling, "levers": levers, "profile": step_profile,
        "peak_rss_mb_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print_tables(report)


def print_tables(r: dict) -> None:
    def fmt(value, spec=".1f"):
        return "—" if value is None else format(value, spec)

    ref, ours, top_k, ratio = r["reference"], r["ours"], r["ours_top_k"], r["ratios"]
    print(f"\nModel {r['model']}: {r['sizes']['train']} training / {r['sizes']['heldout']} held-out trajectories, "
          f"{r['sizes']['epochs']} epoch(s), batch {r['sizes']['batch_size']}, {r['threads']} threads.")
    print(f"Target held-out KL (the reference's final): {r['target_heldout_kl']:.4f}\n")
    print(f"| | reference | ours | ours / reference | ours + top-{CAPTURED_TOP_K} captured | that / reference |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| training answer tokens/s | {ref['tokens_per_s']:.1f} | {ours['tokens_per_s']:.1f} "
          f"| {ratio['throughput_ours_over_reference']:.2f}x | {top_k['tokens_per_s']:.1f} "
          f"| {ratio['throughput_ours_top_k_over_reference']:.2f}x |")
    print(f"| time to target KL (s) | {fmt(ref['time_to_target_s'])} | {fmt(ours['time_to_target_s'])} "
          f"| {fmt(ratio['time_to_target_ours_over_reference'], '.2f')} | {fmt(top_k['time_to_target_s'])} "
          f"| {fmt(ratio['time_to_target_ours_top_k_over_reference'], '.2f')} |")
    print(f"| final held-out KL/token | {ref['final_heldout_kl']:.4f} | {ours['final_heldout_kl']:.4f} "
          f"| {ratio['final_kl_ours_over_reference']:.2f} | {top_k['final_heldout_kl']:.4f} "
          f"| {ratio['final_kl_ours_top_k_over_reference']:.2f} |")
    print(f"| peak RSS in training (MB) | {ref['peak_rss_mb']:.0f} | {ours['peak_rss_mb']:.0f} | "
          f"| {top_k['peak_rss_mb']:.0f} | |")
    print(f"| RSS rise in training (MB) | {ref['rss_rise_mb']:.0f} | {ours['rss_rise_mb']:.0f} "
          f"| {fmt(ratio['peak_rss_rise_ours_over_reference'], '.2f')} | {top_k['rss_rise_mb']:.0f} | |")
    c = r["ceilings"]
    print(f"\nMatmul ceilings: bf16 {c['bf16_gflops']:.0f} GFLOP/s, fp32 {c['fp32_gflops']:.0f} GFLOP/s. "
          f"Ours at {ratio['ours_fraction_of_bf16_ceiling']:.1%} of the bf16 ceiling ({r['flops_model']}).")
    if r["sampling"]:
        s = r["sampling"]
        print(f"\n| sampling, {s['questions']} questions x {s['samples_per_question']} x {s['max_new_tokens']} tokens "
              "| seconds | answer tokens/s |\n| --- | ---: | ---: |")
        print(f"| plain `generate` loop | {s['plain_loop']['seconds']:.1f} | {s['plain_loop']['tokens_per_s']:.1f} |")
        print(f"| ours (batched, KV cache, length-grouped) | {s['ours']['seconds']:.1f} "
              f"| {s['ours']['tokens_per_s']:.1f} |")
        capture = s["ours_with_top_k_capture"]
        print(f"| ours, capturing the teacher's top-{capture['top_k']} | {capture['seconds']:.1f} "
              f"| {capture['tokens_per_s']:.1f} |")
        print(f"| **speed-up** (ours / plain loop) | | **{s['speedup']:.1f}x** |")
    if r["levers"]:
        print("\n| lever | answer tokens/s | vs default | RSS rise (MB) |\n| --- | ---: | ---: | ---: |")
        for row in r["levers"]:
            print(f"| {row['variant']} | {row['tokens_per_s']:.1f} | {row['speed_vs_default']:.2f}x "
                  f"| {row['rss_rise_mb']:.0f} |")
    if r.get("profile"):
        runs = r["profile"]
        print("\n| profile, ms per step (share) | " + " | ".join(runs) + " |\n| --- |" + " ---: |" * len(runs))
        print("| whole step | " + " | ".join(f"{run['step_ms']:.0f}" for run in runs.values()) + " |")
        for phase in PHASES:
            print(f"| {phase} | " + " | ".join(f"{run['phase_ms'][phase]:.0f} ({run['phase_share'][phase]:.0%})"
                                            for run in runs.values()) + " |")
        for family in next(iter(runs.values()))["family_ms"]:
            print(f"| ops: {family} | " + " | ".join(f"{run['family_ms'][family]:.0f} ({run['family_share'][family]:.0%})"
                                                  for run in runs.values()) + " |")
        print("| matmul GFLOP/s achieved | " + " | ".join(fmt(run["matmul_gflops"], ".0f") for run in runs.values()) + " |")

if __name__ == "__main__":
    main()
