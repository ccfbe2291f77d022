"""Benchmarks: each of our trainers side by side with TRL's, in one run on one machine (``python -m rlhf_lite bench``).

Every row trains the same model on the same data with the same batch size, sequence length, LoRA set-up and optimizer
on both sides, and reports a rate (tokens, comparisons, pairs or episodes per second) as the median of several
repetitions after warm-up, with min–max, plus the peak memory the run added (CPU resident memory sampled every 20 ms,
or ``torch.cuda.max_memory_allocated``). The ratio is ours ÷ TRL's: above 1, ours is faster. Absolute rates depend
on the machine; only ratios measured in the same run are comparable, which is why no test asserts a timing.

What is timed: the training call, data already tokenized on our side and already in TRL's dataset format on theirs
(TRL tokenizes while building the trainer, which is not timed). For TRL that is ``trainer.train()``, including its
per-run set-up; the runs are long enough (several steps) for that to be a small share.

Rows:
1. SFT: ``train_sft`` vs ``SFTTrainer`` (prompt/completion, completion-only loss), one epoch of the same examples.
2. Reward model: ``train_reward_model`` with K-choose-2 grouping (all K answers of a prompt in one forward pass),
   and its pairwise-shuffled ablation, vs ``RewardTrainer`` on the same ranked pairs.
3. DPO: ``train_dpo`` vs ``DPOTrainer``, both with the adapters disabled as the reference.
4. RL: iterations of ``train_ppo`` and ``train_grpo`` (generate B answers of at most L tokens, score, update for the
   same epochs) vs ``GRPOTrainer`` at the same B, L, group size and epochs (TRL no longer maintains PPO).
Plus the parameter memory of PPO's policy + reference + value against one copy of the base model.
"""
from __future__ import annotations

import json
import statistics
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch

from ..config import DPOConfig, GRPOConfig, LoRAConfig, PPOConfig, RewardConfig, SFTConfig, get_profile
from ..course.trl_bridge import TRL_HINT, trl_dpo, trl_grpo, trl_reward, trl_sft, trl_version
from ..data import render_prompt
from ..dpo import build_dpo_policy, train_dpo
from ..feedback import variant_comparisons
from ..files import WRITTEN_BY, check_output_file, write_text
from ..grpo import build_grpo_policy, train_grpo
from ..models import TINY_BASE, load_base, transformer_body
from ..ppo import build_policy, train_ppo
from ..reward import build_reward_model, train_reward_model
from ..runtime import MemoryMonitor, course_precision, pick_precision, quiet, runs_dir, versions
from ..sft import add_lora, tokenize_records, train_sft
from ..world import world_from_config
from .gpt2_shape import write_gpt2_shape


@dataclass
class BenchConfig:
    """Sizes of one benchmark run (``bench_config`` holds the presets)."""

    model: str = "tiny"
    """"tiny" (the shipped TinyWorld GPT-2) or "gpt2-shape" (``GPT2Config()``: 124 M parameters,
    random weights, the real 50,257-token GPT-2 tokenizer): GPT-2's shapes without downloading its weights."""
    device: str = "cpu"
    """"cpu" or "cuda". On a GPU both sides run under the course's precision (``runtime.pick_precision``: bf16
    autocast where the GPU has it natively), and utilisation is also given against the GPU's published peak."""
    repeats: int = 3
    """Timed repetitions per row (the table shows their median and min–max)."""
    warmup: int = 1
    """Untimed runs before them (first calls pay for lazy initialisation and allocator growth)."""
    batch_size: int = 16
    """SFT examples per step; also the RL minibatch."""
    sft_steps: int = 12
    """SFT steps per run (one epoch of batch_size × sft_steps demonstrations)."""
    max_length: int = 256
    """Longest sequence (tokens) for SFT, reward model and DPO."""
    pref_prompts: int = 8
    """Ranked prompts per reward-model / DPO run (7 answers each: the reference and six corruptions, 21 pairs)."""
    pref_batch: int = 4
    """Prompts per reward-model / DPO step (all their pairs in one step; TRL gets as many pairs per step)."""
    rl_episodes: int = 32
    """B: answers generated per RL iteration (PPO: B prompts; GRPO: B / group_size prompts × group_size)."""
    rl_max_new_tokens: int = 32
    """L: longest answer, in tokens."""
    rl_group: int = 4
    """G: GRPO's answers per prompt."""
    rl_epochs: int = 2
    """Passes over each iteration's episodes (PPO epochs, GRPO μ / TRL num_iterations)."""
    rl_iterations: int = 2
    """RL iterations per run."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """The adapters (rank 16 on c_attn, c_proj and c_fc), every row and both sides."""
    lr: float = 1e-4
    """Learning rate everywhere (speed does not depend on it; a small one keeps repetitions stable)."""


def bench_config(model: str = "tiny", device: str = "cpu", smoke: bool = False) -> BenchConfig:
    """The preset for ``model``: ``tiny`` as the dataclass defaults; ``gpt2-shape`` with fewer, shorter runs (a CPU
    does a few hundred tokens/s on it); ``smoke=True``: the smallest sizes, one repetition, no warm-up (tests)."""
    if model not in ("tiny", "gpt2-shape"):
        raise ValueError(f"bench --model must be 'tiny' or 'gpt2-shape', got {model!r}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"bench --device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("bench --device cuda: no CUDA device is visible to torch here; run on a GPU machine "
                           "(e.g. Colab with a GPU runtime) or use --device cpu")
    cfg = BenchConfig(model=model, device=device)
    if model == "gpt2-shape" and device == "cpu":
        cfg = replace(cfg, batch_size=4, sft_steps=3, pref_prompts=4, pref_batch=2, rl_episodes=8, rl_max_new_tokens=16,
                      rl_iterations=1, repeats=2)
    if smoke:
        cfg = replace(cfg, repeats=1, warmup=0, batch_size=4, sft_steps=2, max_length=128, pref_prompts=2, pref_batch=1,
                      rl_episodes=4, rl_max_new_tokens=8, rl_group=2, rl_epochs=1, rl_iterations=1)
    return cfg


# ---------------------------------------------------------------------------------------------
# 1. The model and data every row uses
# ---------------------------------------------------------------------------------------------
def bench_model_dir(model: str, workdir: str | Path) -> Path:
    """A model folder for ``model``: the shipped tiny model, or a ``GPT2Config()`` model with random weights (seed 0)
    and the real GPT-2 tokenizer from ``../shared/gpt2-tokenizer``, written to ``workdir`` (TRL's reward trainer loads
    its model from a folder, so both sides load the same one)."""
    if model == "tiny":
        return TINY_BASE
    out = Path(workdir) / "gpt2-shape"
    if not (out / "config.json").is_file():
        write_gpt2_shape(out)
    return out


def fresh_model(model_dir: Path, device: str):
    """(model, tokenizer) loaded from ``model_dir`` the course's way (pad = EOS, left padding, eval mode)."""
    return load_base(str(model_dir), device=device)


def bench_data(tokenizer, cfg: BenchConfig) -> dict:
    """TinyWorld demonstrations for SFT, ranked reference-vs-corruption answers for RM/DPO, prompts for RL."""
    world = world_from_config(get_profile("tiny").world)
    tasks = world.splits["train"]
    demos = [{"instruction": t.instruction, "context": t.context, "response": t.demonstration or t.response}
             for t in tasks[: cfg.batch_size * cfg.sft_steps]]
    ranked = variant_comparisons(world, tasks[: cfg.pref_prompts], world.panel.train, tokenizer)
    for r in ranked:  # prompt + answer + EOS within max_length: nobody truncates (ours) or drops (TRL) a pair
        room = cfg.max_length - len(tokenizer(r["prompt"])["input_ids"]) - 1
        r["responses"] = [tokenizer.decode(tokenizer(x)["input_ids"][: max(room, 1)]) for x in r["responses"]]
    prompts = [render_prompt(tokenizer, t.instruction, t.context) for t in tasks[: cfg.rl_episodes]]
    return {"demos": demos, "ranked": ranked, "tasks": tasks[: cfg.rl_episodes], "prompts": prompts}


# ---------------------------------------------------------------------------------------------
# 2. Measuring: warm-up, repetitions, median and min–max, peak memory
# ---------------------------------------------------------------------------------------------
def summarize(rates: list[float], peaks: list[float]) -> dict:
    """Median, min and max of the rates; the largest peak memory (MiB)."""
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "runs": rates,
            "peak_mb": max(peaks) if peaks else None}


def run_row(ours, theirs, cfg: BenchConfig) -> tuple[dict, dict | None]:
    """Call ``ours()`` and ``theirs()`` alternately (``cfg.warmup`` untimed rounds, then ``cfg.repeats`` timed ones,
    so that a machine slowing down or speeding up during the run affects both sides alike). Each returns (units,
    seconds): the rate is units / seconds. ``theirs`` None: our side only."""
    results = {"ours": ([], []), "theirs": ([], [])}
    for i in range(cfg.warmup + cfg.repeats):
        for side, fn in (("ours", ours), ("theirs", theirs)):
            if fn is None:
                continue
            with MemoryMonitor(cfg.device) as mon:
                units, seconds = fn()
            if i >= cfg.warmup:
                results[side][0].append(units / seconds)
                results[side][1].append(mon.peak_mb)
    return summarize(*results["ours"]), summarize(*results["theirs"]) if theirs is not None else None


def _clock(fn):
    """(fn's return value, wall seconds), CUDA work included."""
    import time

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def matmul_weights(model_dir, lm_head: bool) -> int:
    """Weights one token meets in matrix multiplies: every 2-D weight in the transformer blocks (attention and MLP
    projections), plus the LM head's V × d when it runs. A LoRA training step costs about 4 FLOP per such weight and
    token (2 forward, 2 for the activation gradients; the frozen weights get no gradient, the adapters' are tiny);
    attention's own T × d work is left out, so the FLOP/s derived from it are a lower bound."""
    model = fresh_model(model_dir, "cpu")[0]
    blocks = sum(p.numel() for n, p in transformer_body(model).named_parameters() if p.dim() == 2 and ".h." in f".{n}")
    return blocks + (model.get_output_embeddings().weight.numel() if lm_head else 0)


# Published dense peak rates of common GPUs, TFLOP/s (NVIDIA data sheets): (bf16 tensor cores, float32). The T4 and
# V100 have no bf16 tensor cores (their fp16 peaks, 65 and 125, need loss scaling, which the course keeps out).
GPU_PEAK_TFLOPS = {"H200": (989.0, 67.0), "H100 PCIe": (756.0, 51.0), "H100": (989.0, 67.0), "A100": (312.0, 19.5),
                   "L4": (121.0, 30.3), "A10": (125.0, 31.2), "T4": (None, 8.1), "V100": (None, 15.7)}


def gpu_peak_tflops(name: str, precision: str) -> float | None:
    """The published peak of GPU ``name`` (``torch.cuda.get_device_name()``) at ``precision`` ("bf16" or "fp32"),
    None for a GPU not in :data:`GPU_PEAK_TFLOPS`: MFU = achieved FLOP/s ÷ this."""
    for key, (bf16, fp32) in GPU_PEAK_TFLOPS.items():  # "H100 PCIe" before "H100": the first match wins
        if key in name:
            return bf16 if precision == "bf16" else fp32
    return None


def matmul_gflops(d: int, device: str, tokens: int = 4096, repeats: int = 20) -> float:
    """This machine's matrix-multiply rate at the model's own shapes ([tokens, d] × [d, 4d], an MLP projection), in
    the precision the rows run in (float32, or bf16 under autocast): the yardstick for the training rows'
    utilisation (achieved FLOP/s ÷ this)."""
    x, w = torch.randn(tokens, d, device=device), torch.randn(d, 4 * d, device=device)
    for _ in range(3):
        x @ w
    _, seconds = _clock(lambda: [x @ w for _ in range(repeats)])
    return 2 * tokens * d * 4 * d * repeats / seconds / 1e9


# ---------------------------------------------------------------------------------------------
# 3. The rows
# ---------------------------------------------------------------------------------------------
def sft_row(model_dir, data, cfg: BenchConfig, with_trl: bool) -> dict:
    """SFT tokens/s (every real token of the batch, prompt included, counts; the same examples on both sides)."""
    scfg = SFTConfig(batch_size=cfg.batch_size, max_steps=cfg.sft_steps, max_length=cfg.max_length, lr=cfg.lr,
                     warmup_steps=0, eval_every=10**9, n_samples=0)
    _, tok = fresh_model(model_dir, cfg.device)
    examples = tokenize_records(tok, data["demos"], scfg)
    tokens = sum(len(e["input_ids"]) for e in examples)

    def ours():
        model = add_lora(fresh_model(model_dir, cfg.device)[0], scfg, cfg.lora)
        hist, seconds = _clock(lambda: train_sft(model, tok, {"train": examples}, scfg, progress=False))
        return hist["tokens"], seconds

    def theirs():
        _, info = trl_sft(fresh_model(model_dir, cfg.device)[0], tok, data["demos"], scfg, steps=cfg.sft_steps,
                          lora=cfg.lora)
        return tokens, info["seconds"]

    row = {"row": "SFT", "unit": "tokens/s", "trl_trainer": "SFTTrainer",
           **dict(zip(("ours", "trl"), run_row(ours, theirs if with_trl else None, cfg)))}
    flop_per_token = 4 * matmul_weights(model_dir, lm_head=True)  # both sides run the LM head at every position
    for side in ("ours", "trl"):
        if row[side]:
            row[side]["gflops"] = row[side]["median"] * flop_per_token / 1e9
    return row


def _reward_config(cfg: BenchConfig, grouped: bool = True):
    return RewardConfig(batch_size=cfg.pref_batch, max_length=cfg.max_length, lr=cfg.lr, warmup_steps=0,
                        grouped=grouped, eval_every=10**9)


def reward_rows(model_dir, data, cfg: BenchConfig, with_trl: bool) -> list[dict]:
    """Reward-model comparisons/s: K-choose-2 grouping and the shuffled-pairs ablation, each vs RewardTrainer."""
    _, tok = fresh_model(model_dir, cfg.device)
    rows, trl_result = [], None
    for grouped in (True, False):
        rcfg = _reward_config(cfg, grouped)

        def ours():
            rm = build_reward_model(fresh_model(model_dir, cfg.device)[0], rcfg, cfg.lora)
            hist, seconds = _clock(lambda: train_reward_model(rm, tok, data["ranked"], rcfg, progress=False))
            return hist["pairs"], seconds

        def theirs():
            _, info = trl_reward(str(model_dir), tok, data["ranked"], rcfg, lora=cfg.lora)
            return info["pairs"], info["seconds"]

        ours_result, t = run_row(ours, theirs if with_trl and trl_result is None else None, cfg)
        trl_result = trl_result or t  # TRL's side is the same for both of our variants: measured once
        name = "reward model, K-choose-2 grouped" if grouped else "reward model, shuffled pairs (ablation)"
        rows.append({"row": name, "unit": "comparisons/s", "trl_trainer": "RewardTrainer", "ours": ours_result,
                     "trl": trl_result})
    return rows


def dpo_row(model_dir, data, cfg: BenchConfig, with_trl: bool) -> dict:
    """DPO pairs/s, the adapters disabled as the reference on both sides."""
    dcfg = DPOConfig(batch_size=cfg.pref_batch, max_length=cfg.max_length, lr=cfg.lr, warmup_steps=0,
                     eval_every=10**9)
    _, tok = fresh_model(model_dir, cfg.device)

    def ours():
        lm = build_dpo_policy(fresh_model(model_dir, cfg.device)[0], dcfg, cfg.lora)
        hist, seconds = _clock(lambda: train_dpo(lm, tok, data["ranked"], dcfg, progress=False))
        return hist["pairs"], seconds

    def theirs():
        _, info = trl_dpo(fresh_model(model_dir, cfg.device)[0], tok, data["ranked"], dcfg, lora=cfg.lora)
        return info["pairs"], info["seconds"]

    return {"row": "DPO", "unit": "pairs/s", "trl_trainer": "DPOTrainer",
            **dict(zip(("ours", "trl"), run_row(ours, theirs if with_trl else None, cfg)))}


def rl_rows(model_dir, data, cfg: BenchConfig, with_trl: bool) -> list[dict]:
    """RL episodes/s: PPO and GRPO iterations (generate, score, update) vs GRPOTrainer at equal B, L, G, epochs."""
    n_prompts = cfg.rl_episodes // cfg.rl_group
    pcfg = PPOConfig(steps=cfg.rl_iterations, batch_size=cfg.rl_episodes, minibatch_size=cfg.batch_size,
                     ppo_epochs=cfg.rl_epochs, lr=cfg.lr, max_new_tokens=cfg.rl_max_new_tokens,
                     n_prompts=cfg.rl_episodes, checkpoint_every=10**9)
    gcfg = GRPOConfig(steps=cfg.rl_iterations, prompts_per_step=n_prompts, group_size=cfg.rl_group,
                      minibatch_size=cfg.batch_size, epochs=cfg.rl_epochs, lr=cfg.lr,
                      max_new_tokens=cfg.rl_max_new_tokens,
                      n_prompts=n_prompts)
    _, tok = fresh_model(model_dir, cfg.device)
    rm = build_reward_model(fresh_model(model_dir, cfg.device)[0], RewardConfig(), cfg.lora)
    for p in rm.parameters():
        p.requires_grad_(False)
    episodes = cfg.rl_iterations * cfg.rl_episodes
    lengths: dict[str, list[float]] = {"ppo": [], "grpo": [], "trl": []}

    update = {"tokens": 0, "seconds": 0.0}

    def ppo():
        policy = build_policy(fresh_model(model_dir, cfg.device)[0], rm, pcfg, cfg.lora)
        hist, seconds = _clock(lambda: train_ppo(policy, rm, tok, data["tasks"], pcfg, progress=False))
        lengths["ppo"] += [h["response_length"] for h in hist]
        update["tokens"] += sum(h["update_tokens"] for h in hist)
        update["seconds"] += sum(h["update_s"] for h in hist)
        return episodes, seconds

    def grpo():
        policy = build_grpo_policy(fresh_model(model_dir, cfg.device)[0], gcfg)
        hist, seconds = _clock(lambda: train_grpo(policy, rm, tok, data["tasks"], gcfg, progress=False))
        lengths["grpo"] += [h["response_length"] for h in hist]
        return episodes, seconds

    def theirs():
        _, info = trl_grpo(fresh_model(model_dir, cfg.device)[0], tok, rm, data["prompts"][:n_prompts], gcfg)
        lengths["trl"] += [x["completions/mean_length"] for x in info["log"] if "completions/mean_length" in x]
        return episodes, info["seconds"]

    ppo_result, trl_result = run_row(ppo, theirs if with_trl else None, cfg)
    # the update phase alone (stage 7 of ppo_step, warm-up included): ≈ 4 FLOP per block weight and token
    ppo_result["update_gflops"] = 4 * matmul_weights(model_dir,
                                                     lm_head=False) * update["tokens"] / update["seconds"] / 1e9
    grpo_result, _ = run_row(grpo, None, cfg)
    mean = (lambda xs: round(sum(xs) / len(xs), 1) if xs else None)
    note = (f"B={cfg.rl_episodes}, L≤{cfg.rl_max_new_tokens}, G={cfg.rl_group}, epochs={cfg.rl_epochs}; mean answer "
            f"length ours PPO {mean(lengths['ppo'])}, GRPO {mean(lengths['grpo'])}, TRL {mean(lengths['trl'])} tokens")
    return [{"row": "PPO iteration", "unit": "episodes/s", "trl_trainer": "GRPOTrainer", "ours": ppo_result,
             "trl": trl_result,
             "note": note},
            {"row": "GRPO iteration", "unit": "episodes/s", "trl_trainer": "GRPOTrainer", "ours": grpo_result,
             "trl": trl_result, "note": note}]


def ppo_memory(model_dir, cfg: BenchConfig) -> dict:
    """Parameter memory (MiB) of PPO's policy + reference + value against one copy of the base model: the reference
    is the policy with its adapters disabled and the critic is one linear head on the reward model's hidden states,
    so the three together cost the base model plus adapters and head; separate copies would cost three base models."""
    def mib(params):
        return sum(p.numel() * p.element_size() for p in params) / 2**20

    base = fresh_model(model_dir, cfg.device)[0]
    base_mb = mib(base.parameters())
    rm = build_reward_model(fresh_model(model_dir, cfg.device)[0], RewardConfig(), cfg.lora)
    policy = build_policy(base, rm, PPOConfig(), cfg.lora)
    ours_mb = mib(policy.parameters())
    return {"base_mb": round(base_mb, 2), "policy_reference_value_mb": round(ours_mb, 2),
            "ratio_to_base": round(ours_mb / base_mb, 3), "separate_copies_mb": round(3 * base_mb, 2),
            "reward_model_mb": round(mib(rm.parameters()), 2)}


# ---------------------------------------------------------------------------------------------
# 4. The whole run and its table
# ---------------------------------------------------------------------------------------------
ROWS = ("sft", "reward", "dpo", "rl")


def run_bench(cfg: BenchConfig, out: str | Path | None = None, progress: bool = True, rows_wanted=ROWS) -> dict:
    """The rows ``rows_wanted`` (of :data:`ROWS`) for ``cfg``; TRL's side when TRL is installed (otherwise a note says
    how to add it). Writes the result as JSON to ``out`` when given. Returns it (``rows``, ``ppo_memory``, ``setup``,
    ``notes``)."""
    if out:
        check_output_file(out, "bench")  # before the work: an existing file of yours is never replaced
    quiet()
    with_trl = trl_version() is not None
    notes = [] if with_trl else [f"TRL rows skipped: {TRL_HINT}"]
    if cfg.repeats < 1 or cfg.warmup < 0:
        raise ValueError(f"bench needs repeats >= 1 and warmup >= 0, got repeats={cfg.repeats}, warmup={cfg.warmup}")
    unknown = set(rows_wanted) - set(ROWS)
    if unknown:
        raise ValueError(f"unknown bench rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    steps = [(name, fn) for name, fn in zip(ROWS, (sft_row, reward_rows, dpo_row, rl_rows)) if name in rows_wanted]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="rlhf-lite-bench-") as work:
        model_dir = bench_model_dir(cfg.model, work)
        base, tok = fresh_model(model_dir, "cpu")
        n_params, d = sum(p.numel() for p in base.parameters()), base.config.hidden_size
        del base
        data = bench_data(tok, cfg)
        precision = pick_precision(cfg.device)
        with course_precision(cfg.device, precision):  # both sides alike
            for name, fn in steps:
                if progress:
                    print(f"bench: {name} …", flush=True)
                got = fn(model_dir, data, cfg, with_trl)
                rows += got if isinstance(got, list) else [got]
            memory = ppo_memory(model_dir, cfg)
            peak = matmul_gflops(d, cfg.device)
    gpu = torch.cuda.get_device_name() if cfg.device == "cuda" else None
    for r in rows:
        r["ratio"] = r["ours"]["median"] / r["trl"]["median"] if r.get("trl") else None
    result = {"setup": {**asdict(cfg), "parameters": n_params, "versions": versions(), "trl": trl_version(),
                        "threads": torch.get_num_threads(),
                        "gpu": gpu, "precision": precision, "matmul_gflops": round(peak, 1),
                        "gpu_peak_tflops": gpu_peak_tflops(gpu, precision) if gpu else None},
              "rows": rows, "ppo_memory": memory, "notes": notes}
    if out:
        write_text(out, json.dumps({WRITTEN_BY: "bench", **result}, indent=1) + "\n")
    return result


def bench_table(result: dict, markdown: bool = False) -> str:
    """The benchmark as a table: per row, our rate and TRL's (median [min–max]), ours ÷ TRL, peak memory added
    (MiB). ``markdown=True``: a Markdown table (what the README's performance section shows)."""
    s = result["setup"]

    def rate(x):
        if not x:
            return "—"
        f = (lambda v: f"{v:,.0f}") if x["median"] >= 100 else (lambda v: f"{v:,.1f}") if x["median"] >= 10 else \
            (lambda v: f"{v:.2f}")
        return f"{f(x['median'])} [{f(x['min'])}–{f(x['max'])}]"

    def mem(x):
        return "—" if not x or x.get("peak_mb") is None else f"{x['peak_mb']:,.0f}"

    head = (f"bench: model {s['model']} ({s['parameters'] / 1e6:.1f} M parameters) on {s['device']}"
            f"{' (' + s['gpu'] + ')' if s.get('gpu') else ''}, {s['threads']} threads, torch "
            f"{s['versions'].get('torch')}, "
            f"TRL {s['trl'] or 'not installed'}; median [min–max] of {s['repeats']} runs after {s['warmup']} warm-up")
    cols = ["row", "unit", "ours", "TRL", "ours/TRL", "peak MiB ours / TRL"]
    rows = [[r["row"], r["unit"], rate(r["ours"]), rate(r.get("trl")),
             "—" if r.get("ratio") is None else f"{r['ratio']:.2f}x", f"{mem(r['ours'])} / {mem(r.get('trl'))}"]
            for r in result["rows"]]
    if markdown:
        lines = [head, "", "| " + " | ".join(cols) + " |",
                 "|" + "---|" * len(cols)] + ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [40, 14, 24, 24, 9, 20]
        fmt = lambda r: " ".join(f"{c:<{w}}" if i < 2 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(r, widths)))
        lines = [head, fmt(cols)] + [fmt(r) for r in rows]
    achieved = [(what, (r.get(side) or {}).get(key)) for r in result["rows"]
                for side, key, what in (("ours", "gflops", "our SFT"), ("trl", "gflops", "TRL's SFT"),
                                        ("ours", "update_gflops", "our PPO update phase"))]
    achieved = [(what, g) for what, g in achieved if g]  # GFLOP/s of the rows that measure it
    util = [f"{what} {g:.1f} GFLOP/s = {g / s['matmul_gflops']:.0%}" for what, g in achieved]
    arithmetic = "bf16" if s.get("precision") == "bf16" else "float32"
    if util:
        lines.append(f"{chr(10) if markdown else ''}Compute (≈ 4 FLOP per matrix weight and token, a lower bound): "
                     + ", ".join(util) + f" of this machine's measured {arithmetic} matmul rate "
                                         f"({s['matmul_gflops']:.0f} GFLOP/s)")
    if util and s.get("gpu_peak_tflops"):
        mfu = [f"{what} {g / 1e3 / s['gpu_peak_tflops']:.1%}" for what, g in achieved]
        lines.append(f"MFU against the {s['gpu']}'s published {s['precision']} peak ({s['gpu_peak_tflops']:.0f} "
                     "TFLOP/s): " + ", ".join(mfu))
    m = result["ppo_memory"]
    lines.append(f"{chr(10) if markdown else ''}PPO parameter memory: policy + reference + value "
                 f"{m['policy_reference_value_mb']:.1f} MiB = "
                 f"{m['ratio_to_base']:.2f}x one base model ({m['base_mb']:.1f} MiB; three separate copies "
                 f"{m['separate_copies_mb']:.1f} MiB); the frozen reward model another {m['reward_model_mb']:.1f} MiB")
    notes = [r["note"] for r in result["rows"] if r.get("note")][:1] + result["notes"]
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def bench_command(model: str = "tiny", device: str = "cpu", out: str | None = None, repeats: int | None = None,
                  smoke: bool = False, rows: Sequence[str] = ROWS, markdown: bool = False) -> dict:
    """``bench``: run the rows, print the table, write the JSON (default ``runs/bench-MODEL-DEVICE.json``)."""
    cfg = bench_config(model, device, smoke=smoke)
    if repeats:
        cfg = replace(cfg, repeats=repeats)
    out = out or runs_dir() / f"bench-{model}-{device}{'-smoke' if smoke else ''}.json"
    result = run_bench(cfg, out, rows_wanted=rows)
    print(bench_table(result, markdown=markdown))
    print(f"written to {out}")
    return result
