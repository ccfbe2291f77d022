"""``python -m rlhf_lite memory-plan``: how much GPU memory each stage of a GPT-2 profile needs at its peak, by
calculation, against a 16 GB T4 (Colab's free GPU). The README's memory table is this command's output.

What one training step keeps in memory at its peak (bytes; b sequences of s tokens, GPT-2 124M: L = 12 layers,
width h = 768, a = 12 heads, V = 50,257 tokens, P = 124,439,808 parameters):

* weights: 4·P per model held (float32), plus 16 bytes per trained parameter (its gradient and Adam's two
  moments): all of P for continued pretraining, the LoRA adapters (r = 16) for every other stage;
* activations kept for the backward pass: L · s·b·h·(34 + 5·a·s/h) bytes in 16-bit arithmetic (Korthikanti et al.
  2022, §4.1, eq. 1), twice that in float32 (the T4 has no bfloat16, so the course runs it in float32);
* the LM head's float32 logits where a loss reads them: the logits, their log-softmax and their gradient, 3 · 4 bytes
  for each of b·n positions (n: all s tokens for SFT and pretraining, the response tokens for DPO and PPO);
* a CUDA context and allocator reserve of 1 GB.

An estimate, not a measurement: it leaves out the allocator's fragmentation and small buffers, and sets every
sequence to its longest allowed length.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import Profile, get_profile

GiB = 2**30
T4_GB = 16.0
"""The T4's memory (15.1 GiB usable after the CUDA context, which the overhead below stands for)."""
OVERHEAD_GB = 1.0
"""CUDA context and allocator reserve."""


@dataclass(frozen=True)
class Shape:
    """A GPT-2-shaped model (defaults: GPT-2 124M)."""

    layers: int = 12
    hidden: int = 768
    heads: int = 12
    vocab: int = 50257
    params: int = 124_439_808
    context: int = 1024

    def lora_params(self, r: int = 16) -> int:
        """Trainable parameters of rank-r adapters on c_attn, both c_proj and c_fc in every block."""
        h = self.hidden
        per_block = r * ((h + 3 * h) + (h + h) + (h + 4 * h) + (4 * h + h))
        return self.layers * per_block


def activations_gb(shape: Shape, b: int, s: int, bytes_per_value: int) -> float:
    """Activations of b sequences of s tokens kept for the backward pass (Korthikanti et al. 2022, eq. 1)."""
    h, a = shape.hidden, shape.heads
    return shape.layers * s * b * h * (34 + 5 * a * s / h) * (bytes_per_value / 2) / GiB


def logits_gb(shape: Shape, positions: int) -> float:
    """Float32 logits, their log-softmax and their gradient at ``positions`` positions."""
    return 3 * 4 * positions * shape.vocab / GiB


def stage_plan(profile: Profile, shape: Shape = Shape(), bytes_per_value: int = 4) -> list[dict]:
    """Each training stage's peak: ``{"stage", "batch" (sequences × tokens per forward pass), "weights_gb",
    "activations_gb", "logits_gb", "total_gb"}`` (total includes :data:`OVERHEAD_GB`)."""
    lora = shape.lora_params(profile.lora.r) * 16 / GiB
    model = shape.params * 4 / GiB
    s_sft = min(profile.sft.max_length, shape.context)
    rows = []

    def row(stage, b, s, weights, logit_positions):
        act = activations_gb(shape, b, s, bytes_per_value)
        lg = logits_gb(shape, logit_positions)
        rows.append({"stage": stage, "batch": f"{b} × {s}", "weights_gb": weights, "activations_gb": act,
                     "logits_gb": lg, "total_gb": weights + act + lg + OVERHEAD_GB})

    if profile.data == "tinyworld":  # continued pretraining on TinyWorld's corpus: every weight trains
        pre, s = profile.pretrain, min(profile.pretrain.n_positions, shape.context)
        row("continued pretraining", pre.batch_size, s, model + shape.params * 16 / GiB, pre.batch_size * s)
    b = profile.sft.micro_batch_size or profile.sft.batch_size
    row("SFT", b, s_sft, model + lora, b * s_sft)
    r = profile.reward
    b = (r.micro_batch_size or r.batch_size) * (r.k_max if r.source == "tinyworld" else 2)
    row("reward model", b, min(r.max_length, shape.context), model + lora, 0)
    p = profile.ppo  # the policy and the reward model are both held; a minibatch of episodes per update
    s_rl = min(profile.sft.max_length, shape.context)  # prompts are kept to fit it with room for the answer
    row("PPO", p.minibatch_size, s_rl, 2 * model + lora, p.minibatch_size * p.max_new_tokens)
    d = profile.dpo
    b = (d.micro_batch_size or d.batch_size) * (r.k_max if r.source == "tinyworld" else 2)
    row("DPO", b, min(d.max_length, shape.context), model + lora, b * r.max_new_tokens)
    return rows


def plan_table(names: tuple[str, ...] = ("gpt2", "gpt2-hub")) -> str:
    """The README's table: every stage of each profile, by :func:`stage_plan`, in float32 as on a T4."""
    lines = ["| profile | stage | sequences × tokens | weights | activations | logits | total (of 16 GB) |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        for r in stage_plan(get_profile(name)):
            lines.append(f"| {name} | {r['stage']} | {r['batch']} | {r['weights_gb']:.1f} GB | "
                         f"{r['activations_gb']:.1f} GB | {r['logits_gb']:.1f} GB | {r['total_gb']:.1f} GB |")
    return "\n".join(lines)


def memory_plan_command() -> dict:
    """Print the memory table of the GPT-2 profiles on a T4; return the largest stage's total in GB."""
    print(plan_table())
    worst = max(r["total_gb"] for name in ("gpt2", "gpt2-hub") for r in stage_plan(get_profile(name)))
    print(f"largest stage: {worst:.1f} GB of the T4's {T4_GB:.0f} GB (an estimate: see the module's docstring)")
    return {"largest_gb": round(worst, 2)}
