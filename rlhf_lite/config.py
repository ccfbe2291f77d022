"""Configuration: one dataclass per stage, and the profiles that fill them.

Profiles (pick with the ``RLHF_LITE_PROFILE`` environment variable, default ``tiny``):

* ``smoke``      — CI: every stage in seconds, numbers meaningless but code paths exercised.
* ``tiny``       — the course default: TinyWorld on a 2-core CPU in minutes.
* ``gpt2``       — Colab GPU: real GPT-2 124M learns TinyWorld (continued pretraining on its corpus), then the same
  stages and the same gold panel as ``tiny``: what 56 times the parameters do.
* ``gpt2-smoke`` — the ``gpt2`` code path (a hub-style base model, continued pretraining, the 50,257-token
  tokenizer) at ``smoke`` sizes; CI runs it on a small random GPT-2-shaped model (``--base-model PATH``).
* ``gpt2-hub``   — real GPT-2 on real data: Dolly-15k demonstrations and HH-RLHF comparisons from the hub
  (``data`` and ``reward.source`` may also name local files in those schemas). No gold judge there: models are
  compared by reward-model score and KL only.
* ``gpt2-hub-smoke`` — the ``gpt2-hub`` code path at ``gpt2-smoke`` sizes, on the local files in those schemas in
  ``data/hub-smoke`` (CI, with ``--base-model PATH``).

``$RLHF_LITE_BASE_MODEL`` (or the commands' ``--base-model``) points the GPT-2 profiles at a local model folder.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

PROFILE_ENV = "RLHF_LITE_PROFILE"
BASE_MODEL_ENV = "RLHF_LITE_BASE_MODEL"
SET_ENV = "RLHF_LITE_SET"
"""Settings that override the profile's, e.g. ``reward.epochs=2 ppo.lr=1e-4`` (the commands' ``--set``)."""


@dataclass
class LoRAConfig:
    """The low-rank adapters every stage trains (SFT, reward model, PPO, DPO, GRPO): one setting for all of them,
    so another model family needs one change (``targets``)."""

    r: int = 16
    """Rank r: adapter matrices are (d x r) and (r x k)."""
    alpha: int = 32
    """Scale numerator: the update is (alpha / r) * B @ A."""
    dropout: float = 0.0
    """Dropout on the adapters' input. 0: on a CPU it makes every step noticeably slower (an extra copy of each
    adapted layer's input), and the RL stages need dropout off anyway (ratio 1 on the first minibatch)."""
    targets: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")
    """Modules that get adapters. GPT-2: c_attn (q,k,v), c_proj (attention and MLP outputs), c_fc (MLP input);
    Llama-style models: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj."""


@dataclass
class WorldConfig:
    """How TinyWorld is generated (``rlhf_lite.world.build_world``)."""

    seed: int = 0
    """Everything in the world (facts, prompts, users, splits) is a function of this seed."""
    n_prompts: int = 6000
    """Distinct instruction prompts generated, before the split by user."""
    mix: str = "instructgpt"
    """Category mix: "instructgpt" (Ouyang et al. 2022, Table 1 use cases) or "uniform"."""
    max_prompts_per_user: int = 200
    """Cap on prompts per user id, as InstructGPT capped at 200."""
    few_shot_prob: float = 0.15
    """Share of (context-free) prompts given in few-shot form, with solved examples first."""


@dataclass
class PretrainConfig:
    """Tokenizer and base-model pretraining (``python -m rlhf_lite pretrain``)."""

    seed: int = 0
    """Seed for the world, the corpus, initialisation and batch order."""
    n_docs: int = 24000
    """Corpus documents generated from the world (about 70 tokens each)."""
    heldout_frac: float = 0.03
    """Share of documents kept out of training to measure held-out loss."""
    vocab_size: int = 2048
    """Byte-level BPE vocabulary size, including the 256 byte tokens and <|endoftext|>."""
    n_positions: int = 256
    """Context length of the model (and the training block size)."""
    n_embd: int = 192
    """Width of the residual stream."""
    n_layer: int = 4
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads per block (head size = n_embd / n_head)."""
    steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 16
    """Blocks of n_positions tokens per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10 %)."""
    warmup_steps: int = 50
    """Linear warm-up steps."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (not on biases or LayerNorm)."""
    eval_every: int = 100
    """Steps between held-out loss evaluations."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default (all cores)."""


@dataclass
class SFTConfig:
    """Supervised fine-tuning on demonstrations (``rlhf_lite.sft.train_sft``)."""

    prompt_format: str = "alpaca"
    """How prompts are rendered: "alpaca" (### Instruction/### Response) or a chat template: "chatml", "llama2"."""
    max_length: int = 256
    """Longest example in tokens (prompt + response + EOS); longer ones lose prompt tokens from the left."""
    n_train: int = 0
    """Use only the first n_train training examples (0: all). The LIMA-style experiment varies this."""
    epochs: int = 3
    """Passes over the training examples (ignored when max_steps > 0)."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: run all epochs)."""
    batch_size: int = 16
    """Examples per optimizer step."""
    micro_batch_size: int = 0
    """Examples per forward pass: a step's ``batch_size`` examples go through in pieces of this many and their gradients
    add up to the same update (gradient accumulation; 0: all at once). Lowers peak memory, not the result."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, then linear decay to 0). LoRA tolerates a higher one."""
    warmup_steps: int = 20
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Clip the gradient's global norm to this."""
    lora: bool = True
    """Train low-rank adapters (the profile's ``LoRAConfig``) instead of all weights."""
    quantization: str = "none"
    """QLoRA: "4bit" (NF4) or "8bit" base weights via bitsandbytes, or "none"."""
    eval_every: int = 100
    """Steps between validation-loss evaluations and sample generations."""
    eval_examples: int = 128
    """Validation examples used for the validation loss."""
    n_samples: int = 2
    """Validation prompts whose generations are logged at each evaluation."""
    max_new_tokens: int = 64
    """Length limit for the logged sample generations."""
    seed: int = 0
    """Seed for data order, dropout and sampling."""


@dataclass
class RewardConfig:
    """Comparison data and reward-model training (``rlhf_lite.feedback``, ``rlhf_lite.reward``)."""

    source: str = "tinyworld"
    """Comparisons: "tinyworld" (SFT samples ranked by the labeler panel), "hh-rlhf", or a local preference file."""
    n_prompts: int = 3600
    """Training prompts that get a ranking (each one: K responses, C(K,2) comparisons). InstructGPT ranked more
    prompts (33k) than it had demonstrations (13k). Notebook 04 measures how the reward model's accuracy grows with
    this number."""
    n_eval_prompts: int = 200
    """Prompts of held-out (validation) users whose comparisons measure the reward model."""
    k_min: int = 4
    """Fewest responses ranked per prompt (InstructGPT: 4)."""
    k_max: int = 9
    """Most responses ranked per prompt (InstructGPT: 9); K is drawn uniformly per prompt."""
    temperature: float = 1.0
    """Sampling temperature of the SFT model when producing the responses to rank."""
    max_new_tokens: int = 64
    """Longest sampled response to rank; one that reaches it without EOS is unfinished."""
    max_length: int = 256
    """Longest prompt + response in tokens; longer ones lose prompt tokens from the left."""
    lora: bool = True
    """Train LoRA adapters (the profile's ``LoRAConfig``, plus the scalar head) instead of all weights."""
    epochs: int = 1
    """Passes over the comparisons. InstructGPT trains one: a second overfits (Ouyang et al. 2022, §3.5, footnote 5).
    ``reward --epochs 2`` measures a second one here (docs/results.md)."""
    batch_size: int = 8
    """Prompts per optimizer step; all K responses of a prompt go in one forward pass."""
    micro_batch_size: int = 0
    """Prompts per forward pass: a step's ``batch_size`` prompts (each with all its K responses) go through in pieces
    of this many and their gradients add up to the same update (gradient accumulation; 0: all at once). Lowers peak
    memory, not the result."""
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warm-up, linear decay to 0)."""
    warmup_steps: int = 10
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Clip the gradient's global norm to this."""
    grouped: bool = True
    """True: a prompt's C(K,2) pairs share one batch element (K forward passes). False: the ablation that
    shuffles pairs as independent examples (2 forward passes per pair)."""
    eval_every: int = 50
    """Optimizer steps between validation evaluations."""
    seed: int = 0
    """Seed for sampling, labeler assignment, head initialisation and batch order."""


@dataclass
class PPOConfig:
    """PPO against the reward model with a per-token KL penalty to the SFT model (``rlhf_lite.ppo``)."""

    steps: int = 40
    """PPO iterations; each samples ``batch_size`` fresh responses, scores them and updates on them."""
    batch_size: int = 64
    """Prompts (episodes) per iteration."""
    minibatch_size: int = 16
    """Episodes per gradient step inside an iteration."""
    ppo_epochs: int = 4
    """Passes over each iteration's episodes (the rollout is reused, so later passes are off-policy)."""
    lr: float = 3e-4
    """Adam learning rate of the LoRA adapters and the value head (constant). Watch ``approx_kl``: above
    ~0.05 per update (it reached 0.3 at 1e-3 on tiny) the updates are too large and the gold score falls."""
    max_new_tokens: int = 64
    """Longest sampled response; one that reaches it without EOS gets ``no_eos_penalty``."""
    temperature: float = 1.0
    """Sampling temperature. Log-probs for the loss and the KL use the same one (logits / T)."""
    init_kl_coef: float = 0.2
    """β of the KL penalty at the start (Stiennon et al. 2020: 0.05; InstructGPT: 0.02). Our small reward model
    cannot check facts, so PPO gets a shorter leash than in the papers. Notebook 05's explorer compares β values."""
    adaptive_kl: bool = False
    """Steer β towards ``kl_target`` with Ziegler et al.'s controller instead of keeping it fixed."""
    kl_target: float = 6.0
    """Target KL to the SFT model in nats per response (adaptive controller only)."""
    kl_horizon: int = 10000
    """Episodes over which the adaptive controller closes the gap (Ziegler et al. 2019: 10 000)."""
    gamma: float = 1.0
    """Discount over response tokens (1: the score at the end counts fully for every token)."""
    lam: float = 0.95
    """GAE λ: 1 is Monte-Carlo returns (unbiased, noisy), 0 is one-step TD (biased by the value head)."""
    clip_range: float = 0.2
    """ε of the clipped policy objective: ratios outside [1 − ε, 1 + ε] get no gradient."""
    clip_range_value: float = 5.0
    """How far a value prediction may move from its rollout-time value before the loss clips it, in units of the
    reward model's score. The usual 0.2 assumes normalised returns; our scores spread over several units from one
    prompt to the next, and a 0.2 leash would keep the critic from learning them for dozens of iterations."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    vf_lr: float = 1e-2
    """Adam learning rate of the critic's head (its own parameter group, a linear head on frozen features, so
    it can learn much faster than the policy). The critic must learn each prompt's expected score within the
    first iterations: most of a score's variance is which prompt was drawn (notebook 05 measures it), and
    without that baseline the prompt, not the sampled answer, decides the sign of most advantages."""
    value_init: str = "zero"
    """Critic head start: "zero" (V = 0 everywhere) or "reward_model" (a copy of the RM head, InstructGPT's
    choice; our RM was trained at the last token only, so its values mid-response are noise: notebook 05)."""
    no_eos_penalty: float | None = -1.0
    """Score given to a response that never emitted EOS, instead of the reward model's (None: keep the RM's)."""
    whiten_rewards: bool = False
    """Scale the per-token rewards to unit variance per batch (mean kept) before GAE."""
    ptx_coef: float = 0.0
    """γ of PPO-ptx: weight of the pretraining LM loss added to every minibatch (0: plain PPO)."""
    ptx_batch_size: int = 4
    """Pretraining-corpus rows (``n_positions`` tokens each) per minibatch when ``ptx_coef`` > 0."""
    grad_clip: float = 1.0
    """Clip the gradient's global norm to this."""
    n_prompts: int = 0
    """Draw prompts from the first n_prompts training tasks (0: all of them)."""
    checkpoint_every: int = 10
    """Iterations between checkpoints (when an output folder is given); ``resume=`` continues from one."""
    seed: int = 0
    """Seed for prompt order, sampling and adapter initialisation."""


@dataclass
class DPOConfig:
    """Direct Preference Optimization on the reward model's comparisons (``rlhf_lite.dpo``)."""

    beta: float = 0.1
    """β of DPO: the strength of the implicit KL leash (Rafailov et al. 2023 used 0.1 for most runs). The
    implicit reward is β·log(π/π_ref); a small β lets the policy move far from the SFT model."""
    lr: float = 5e-4
    """Peak AdamW learning rate of the LoRA adapters (linear warm-up, linear decay to 0)."""
    epochs: int = 1
    """Passes over the comparisons."""
    batch_size: int = 8
    """Prompts per optimizer step; all K responses of a prompt go through the policy and the reference once."""
    micro_batch_size: int = 0
    """Prompts per forward pass: a step's ``batch_size`` prompts (each with all its K responses) go through in pieces
    of this many and their gradients add up to the same update (gradient accumulation; 0: all at once). Lowers peak
    memory, not the result."""
    warmup_steps: int = 10
    """Linear warm-up steps."""
    max_length: int = 256
    """Longest prompt + response in tokens; longer ones lose prompt tokens from the left."""
    grad_clip: float = 1.0
    """Clip the gradient's global norm to this."""
    n_prompts: int = 0
    """Train on the first n_prompts ranked prompts (0: all of them)."""
    eval_every: int = 50
    """Optimizer steps between validation evaluations."""
    seed: int = 0
    """Seed for batch order and adapter initialisation."""


@dataclass
class GRPOConfig:
    """Group Relative Policy Optimization against the reward model (``rlhf_lite.grpo``; Shao et al. 2024)."""

    steps: int = 40
    """Iterations; each samples ``group_size`` responses to each of ``prompts_per_step`` prompts."""
    prompts_per_step: int = 16
    """Prompts per iteration (episodes per iteration = prompts_per_step × group_size, 64 like PPO's)."""
    group_size: int = 4
    """Responses sampled per prompt; each one's advantage is its score relative to its group's."""
    minibatch_size: int = 16
    """Episodes per gradient step inside an iteration."""
    epochs: int = 4
    """Passes over each iteration's episodes (PPO's 4, so both make the same number of updates)."""
    lr: float = 3e-4
    """Adam learning rate of the LoRA adapters (constant)."""
    max_new_tokens: int = 64
    """Longest sampled response; one that reaches it without EOS gets ``no_eos_penalty``."""
    temperature: float = 1.0
    """Sampling temperature; log-probs for the loss use the same one."""
    kl_coef: float = 0.04
    """β of the KL term in the loss (DeepSeekMath §4.2 used 0.04), estimated per token with
    exp(ref − logp) − (ref − logp) − 1, which is non-negative and unbiased."""
    clip_range: float = 0.2
    """ε of the clipped objective."""
    scale_rewards: bool = True
    """Divide each group's centred scores by the group's standard deviation (GRPO); False keeps the centred
    scores (Liu et al. 2025, "Dr. GRPO", argue the division over-weights groups whose answers are all alike)."""
    no_eos_penalty: float | None = -1.0
    """Score given to a response that never emitted EOS, instead of the reward model's (None: keep the RM's)."""
    grad_clip: float = 1.0
    """Clip the gradient's global norm to this."""
    n_prompts: int = 0
    """Draw prompts from the first n_prompts training tasks (0: all of them)."""
    seed: int = 0
    """Seed for prompt order, sampling and adapter initialisation."""


@dataclass
class Profile:
    """A named bundle of settings: which base model, how big a world, how long each stage runs."""

    name: str
    """smoke, tiny, gpt2, gpt2-smoke, gpt2-hub or gpt2-hub-smoke."""
    base_model: str
    """"tiny" (the shipped TinyWorld GPT-2), or a hub name or local folder such as "gpt2". A hub model on TinyWorld
    data first learns the world's language (continued pretraining with ``pretrain``'s steps, batch and learning
    rate; its own width, depth and vocabulary)."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """World generation settings."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """Pretraining settings (used by `python -m rlhf_lite pretrain`)."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Supervised fine-tuning settings."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Comparison collection and reward-model settings."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO settings (and PPO-ptx's, with ``ptx_coef``)."""
    dpo: DPOConfig = field(default_factory=DPOConfig)
    """DPO settings (notebook 07)."""
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    """GRPO settings (notebook 07)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """The adapters every stage trains."""
    ptx_coef: float = 1.0
    """γ of the PPO-ptx run the pipeline trains beside plain PPO (same settings otherwise)."""
    n_eval_prompts: int = 200
    """Test prompts scored by the gold panel when a notebook measures a model."""
    max_new_tokens: int = 64
    """Longest response generated when a model is evaluated; one that hits it without EOS is unfinished."""
    data: str = "tinyworld"
    """Where the demonstrations come from. "tinyworld": the generated world's writers (comparisons and judges from
    the world too; a gold panel measures every stage). "dolly": Dolly-15k from the hub; or a local file in Dolly's
    schema. With real data, comparisons come from ``reward.source`` (HH-RLHF or a local file) and there is no gold
    judge: models are compared by reward-model score and KL."""

    @property
    def smoke(self) -> bool:
        """A CI profile (``smoke``, ``gpt2-smoke``): every stage in seconds, so a result there promises nothing and
        the notebooks skip their checks of what a lesson shows."""
        return self.name.endswith("smoke")


# Which settings must be > 0, or lie in [0, 1]; every other number must be finite and ≥ 0 (``no_eos_penalty``: any
# finite number or None). A count of 0 means "all" where the field's docstring says so (n_train, max_steps, n_prompts).
_POSITIVE = {"steps", "batch_size", "minibatch_size", "ppo_epochs", "epochs", "lr", "temperature", "max_new_tokens",
             "group_size", "prompts_per_step", "max_length", "r", "alpha", "k_min", "k_max", "eval_every",
             "checkpoint_every", "n_positions", "n_embd", "n_layer", "n_head", "vocab_size", "n_docs", "ptx_batch_size",
             "kl_target", "kl_horizon", "clip_range", "clip_range_value", "beta", "grad_clip", "n_eval_prompts"}
_UNIT = {"gamma", "lam", "heldout_frac", "few_shot_prob", "dropout"}


MIN_TEMPERATURE = 0.01
"""The lowest sampling temperature accepted: below it, logits / T overflow float32 (greedy decoding is
``do_sample=False``)."""


def validate_config(cfg) -> None:
    """Check every number of a stage's config (a dataclass above) before any work: an error names the setting,
    its value and the valid range (``PPOConfig.init_kl_coef must be a finite number ≥ 0, got nan``)."""
    for f in dataclasses.fields(cfg):
        v, name = getattr(cfg, f.name), f"{type(cfg).__name__}.{f.name}"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v}")
        if f.name == "no_eos_penalty":
            continue
        if f.name in _UNIT and not 0 <= v <= 1:
            raise ValueError(f"{name} must lie between 0 and 1, got {v}")
        if f.name in _POSITIVE and v <= 0:
            raise ValueError(f"{name} must be greater than 0, got {v}")
        if v < 0:
            raise ValueError(f"{name} must be a finite number ≥ 0, got {v}")
        if f.name == "temperature" and v < MIN_TEMPERATURE:
            raise ValueError(f"{name} must be at least {MIN_TEMPERATURE} (below it the logits / T overflow), got {v}")
    batch = getattr(cfg, "batch_size", None) if not hasattr(cfg, "group_size") else \
        getattr(cfg, "prompts_per_step") * getattr(cfg, "group_size")
    if hasattr(cfg, "minibatch_size") and batch is not None and cfg.minibatch_size > batch:
        raise ValueError(f"{type(cfg).__name__}.minibatch_size ({cfg.minibatch_size}) is larger than the "
                         f"{batch} episodes of one iteration; make it at most {batch}")


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", "tiny", WorldConfig(n_prompts=600),
                     PretrainConfig(n_docs=600, steps=6, batch_size=4, n_positions=128, n_embd=32, n_layer=1,
                                    n_head=2, vocab_size=512, eval_every=3, warmup_steps=2),
                     SFTConfig(epochs=1, max_steps=40, batch_size=16, eval_every=20, eval_examples=16, n_samples=1,
                               max_new_tokens=24, lr=3e-3),
                     RewardConfig(n_prompts=48, n_eval_prompts=16, k_min=4, k_max=5, lr=3e-3, eval_every=3,
                                  max_new_tokens=24),
                     PPOConfig(steps=4, batch_size=8, minibatch_size=4, ppo_epochs=2, max_new_tokens=24,
                               ptx_batch_size=2,
                               checkpoint_every=2),
                     DPOConfig(batch_size=4, lr=1e-3, eval_every=3, warmup_steps=2, n_prompts=24),
                     GRPOConfig(steps=4, prompts_per_step=4, group_size=2, minibatch_size=4, epochs=2,
                                max_new_tokens=24),
                     n_eval_prompts=32, max_new_tokens=24),
    "tiny": Profile("tiny", "tiny"),
    # GPT-2 124M on TinyWorld: tiny's world, data sizes and steps. Sized by estimate to finish in a Colab session; not
    # yet measured on a GPU. The learning rates are the usual ones for LoRA at this size (3-5 times below tiny's).
    "gpt2": Profile("gpt2", "gpt2",
                    pretrain=PretrainConfig(steps=1000, batch_size=16, lr=3e-4, warmup_steps=50),
                    sft=SFTConfig(lr=5e-4), reward=RewardConfig(lr=2e-4, micro_batch_size=2), ppo=PPOConfig(lr=1e-4),
                    dpo=DPOConfig(lr=1e-4, micro_batch_size=2), grpo=GRPOConfig(lr=1e-4)),
    "gpt2-hub": Profile("gpt2-hub", "gpt2",
                        sft=SFTConfig(max_length=512, epochs=1, batch_size=8, lr=2e-4, eval_every=200,
                                      max_new_tokens=128),
                        reward=RewardConfig(source="hh-rlhf", n_prompts=20000, n_eval_prompts=1000, lr=1e-4,
                                            max_length=512, eval_every=200, max_new_tokens=128, micro_batch_size=4),
                        ppo=PPOConfig(steps=100, batch_size=64, minibatch_size=8, lr=1e-4, max_new_tokens=128,
                                      ptx_batch_size=4),
                        dpo=DPOConfig(lr=5e-5, max_length=512, eval_every=200, micro_batch_size=4),
                        grpo=GRPOConfig(steps=100, minibatch_size=8, lr=1e-4, max_new_tokens=128),
                        n_eval_prompts=200, max_new_tokens=128, data="dolly"),
}
# gpt2-smoke: the gpt2 code path (continued pretraining of a hub-style model, GPT-2's 50,257-token tokenizer) at
# smoke's sizes, a little smaller still where the large vocabulary costs time (SFT steps, prompts evaluated)
_smoke = PROFILES["smoke"]
PROFILES["gpt2-smoke"] = replace(_smoke, name="gpt2-smoke", base_model="gpt2", world=WorldConfig(n_prompts=300),
                                 pretrain=PretrainConfig(n_docs=600, steps=6, batch_size=4, n_positions=128, lr=1e-3,
                                                         eval_every=3, warmup_steps=2),
                                 sft=replace(_smoke.sft, max_steps=10, batch_size=8, eval_every=5, warmup_steps=2),
                                 reward=replace(_smoke.reward, n_prompts=24, n_eval_prompts=8),
                                 ppo=replace(_smoke.ppo, steps=2, checkpoint_every=1), n_eval_prompts=16)
# gpt2-hub-smoke: gpt2-hub's code path (real-data loaders, HH dialogues rendered in the policy's format, prompts too
# long for the context left out) at gpt2-smoke's sizes, on local files in Dolly's and HH-RLHF's schemas; SFT and
# the reward model accumulate gradients over micro-batches, as gpt2-hub's reward model and DPO do
HUB_SMOKE_DATA = Path(__file__).resolve().parent.parent / "data" / "hub-smoke"
_g2s = PROFILES["gpt2-smoke"]
PROFILES["gpt2-hub-smoke"] = replace(_g2s, name="gpt2-hub-smoke", data=str(HUB_SMOKE_DATA / "dolly-format.jsonl"),
                                     sft=replace(_g2s.sft, max_length=512, micro_batch_size=4),
                                     reward=replace(_g2s.reward, source=str(HUB_SMOKE_DATA / "hh-rlhf-format.jsonl"),
                                                    n_prompts=24, n_eval_prompts=4, max_length=512,
                                                    micro_batch_size=2),
                                     dpo=replace(_g2s.dpo, max_length=512, micro_batch_size=2))


def get_profile(name: str | None = None, base_model: str | None = None) -> Profile:
    """The profile ``name``, else ``$RLHF_LITE_PROFILE``, else ``tiny``. Unknown names are an error.

    ``base_model`` (the commands' ``--base-model``), else ``$RLHF_LITE_BASE_MODEL``, replaces the base model of the
    GPT-2 profiles, e.g. a local folder holding GPT-2's weights and tokenizer when there is no hub. The TinyWorld
    profiles always start from the shipped model: passing ``base_model`` to them is an error, and the environment
    variable is ignored there."""
    source = "argument" if name is not None else f"${PROFILE_ENV}"
    if name is None:
        name = os.environ.get(PROFILE_ENV, "").strip() or "tiny"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r} (from {source}); valid profiles are: {', '.join(PROFILES)}. "
                         f"For example: export {PROFILE_ENV}=tiny")
    p = PROFILES[name]
    p = replace(p, world=replace(p.world), pretrain=replace(p.pretrain), sft=replace(p.sft), reward=replace(p.reward),
                ppo=replace(p.ppo), dpo=replace(p.dpo), grpo=replace(p.grpo), lora=replace(p.lora))
    if base_model is not None and p.base_model == "tiny":
        raise ValueError(f"--base-model is for the GPT-2 profiles (gpt2, gpt2-smoke, gpt2-hub); profile {name!r} "
                         "starts from the shipped TinyWorld model")
    chosen = base_model if base_model is not None else os.environ.get(BASE_MODEL_ENV, "").strip() or None
    if chosen and p.base_model != "tiny":
        p = replace(p, base_model=chosen)
    return override(p, os.environ.get(SET_ENV, ""), source=f"${SET_ENV}")


def _parses(kind, text: str) -> bool:
    try:
        kind(text)
        return True
    except ValueError:
        return False


def override(profile: Profile, settings: str, source: str = "--set") -> Profile:
    """``profile`` with ``settings`` applied: ``SECTION.FIELD=VALUE`` items separated by spaces, e.g.
    ``"reward.epochs=2 ppo.init_kl_coef=0.1"`` (a section is one of the profile's stage configs, ``world`` …
    ``lora``; a field without a section is the profile's own, e.g. ``n_eval_prompts=100``). A value is read as its
    field's type; an unknown section or field, or a value of the wrong type, is an error that names it. The result
    is checked with :func:`validate_config`, and every setting enters the stages' cache keys, so an override trains
    its own stages instead of reusing the default ones."""
    sections = [f.name for f in dataclasses.fields(profile) if dataclasses.is_dataclass(getattr(profile, f.name))]
    for item in settings.split():
        key, eq, text = item.partition("=")
        section, _, name = key.rpartition(".")
        if not eq or not name:
            raise ValueError(f"cannot read {item!r} (from {source}): write SECTION.FIELD=VALUE, e.g. reward.epochs=2")
        if section and section not in sections:
            raise ValueError(f"no settings section {section!r} in {item!r} (from {source}); the sections are: "
                             f"{', '.join(sections)}")
        target = getattr(profile, section) if section else profile
        names = [f.name for f in dataclasses.fields(target)
                 if section or f.name not in sections + ["name", "base_model"]]
        if name not in names:
            raise ValueError(f"{section or 'the profile'} has no setting {name!r} ({item!r}, from {source}); its "
                             f"settings are: {', '.join(names)}")
        old = getattr(target, name)
        try:
            if isinstance(old, bool):
                if text.lower() not in ("true", "false"):
                    raise ValueError
                value = text.lower() == "true"
            elif isinstance(old, tuple):
                value = tuple(v for v in text.split(",") if v)
            elif old is None:  # an optional setting: a whole number, a number or a word
                value = next((c(text) for c in (int, float) if _parses(c, text)), text)
            else:
                value = type(old)(text)
        except ValueError:
            kind = {bool: "true or false", int: "a whole number", float: "a number"}.get(type(old), "a word")
            raise ValueError(f"{key} takes {kind} (now {old!r}), got {text!r} (from {source})") from None
        if section:
            profile = replace(profile, **{section: replace(target, **{name: value})})
            validate_config(getattr(profile, section))
        else:
            profile = replace(profile, **{name: value})
            validate_config(profile)
    return profile
