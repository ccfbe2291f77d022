"""Command line: ``python -m rlhf_lite [--profile P] [--base-model PATH] [--set SECTION.FIELD=VALUE …] COMMAND …``
(see ``--help``).

This module only parses arguments. Each command is one library function (the table :data:`COMMANDS`): the course's
stages in :mod:`rlhf_lite.commands`, the measurements in :mod:`rlhf_lite.course`, developer tools in
:mod:`rlhf_lite.tools`. A function that has a ``profile`` parameter gets the profile as an object. Settings have one
way in, ``--set``; a command's flags such as ``ppo --beta`` are documented aliases of ``--set`` fields.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import math
import sys
from pathlib import Path


def at_least(lo: int):
    """argparse type: a whole number ≥ ``lo`` (the error names the option and the range)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {v}")
        return v
    return parse


def number(positive: bool = False):
    """argparse type: a finite number ≥ 0 (> 0 when ``positive``)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v) or v < 0 or (positive and v == 0):
            raise argparse.ArgumentTypeError(f"must be a finite number {'>' if positive else '≥'} 0, got {text}")
        return v
    return parse


def opt(*names: str, alias=None, **kw) -> tuple:
    """One option of a command. ``alias``: the ``--set`` field it stands for ("ppo.init_kl_coef"), or for a flag a
    function of the profile giving the settings it stands for."""
    return names, alias, kw


DEVICE = [opt("--device", default=None, choices=("auto", "cpu", "cuda"),
              help="where to run: auto (the GPU when torch sees one; the default, or $RLHF_LITE_DEVICE), cpu or cuda"),
          opt("--base-model", default=argparse.SUPPRESS, metavar="PATH",
              help="the GPT-2 profiles' base model: a folder with its weights and tokenizer, or a hub name")]
WORLD_SEED = opt("--world-seed", alias="world.seed", type=at_least(0), help="which world (default: the profile's)")
FULL = "full fine-tuning instead of LoRA"
SAVED_POLICY = "`ppo`, `dpo` or `rejection-sampling --out PATH`"

COMMANDS: dict[str, tuple[str, str, list]] = {
    "pretrain": ("commands:pretrain", "build the tokenizer and pretrain the tiny GPT-2 from scratch", [
        opt("--out", required=True, help="folder to write (replaced atomically when training finishes)"),
        opt("--steps", alias="pretrain.steps", type=at_least(1), help="optimizer steps"),
        opt("--seed", alias="pretrain.seed", type=at_least(0), help="seed of the corpus, initialisation, batch order"),
        opt("--threads", alias="pretrain.threads", type=at_least(0), help="torch CPU threads (0: all cores)")]),
    "world": ("commands:world", "print sample instruction records (Dolly schema) per category, or stats", [
        opt("--show", type=at_least(1), default=2, metavar="N", help="records per category (default 2)"),
        opt("--stats", action="store_true", help="print counts, splits and panel agreement as JSON instead"),
        WORLD_SEED, opt("--seed", type=at_least(0), default=0, help="seed of which records --show picks")]),
    "sft": ("commands:sft", "supervised fine-tuning (LoRA by default), then gold score and win rate vs base", [
        opt("--out", help="folder for the adapter, the merged model and metrics.json (optional)"),
        opt("--n", type=at_least(1), default=200, help="test prompts for the gold evaluation (default 200)"),
        opt("--n-train", alias="sft.n_train", type=at_least(1), help="train on the first N examples only (LIMA)"),
        opt("--epochs", alias="sft.epochs", type=at_least(1), help="passes over the demonstrations"),
        opt("--max-steps", alias="sft.max_steps", type=at_least(1), help="step limit"),
        opt("--full", action="store_true", help=f"{FULL}, at a quarter of the learning rate",
            alias=lambda p: ["sft.lora=false", f"sft.lr={p.sft.lr / 4}"]),
        WORLD_SEED, opt("--seed", alias="sft.seed", type=at_least(0), help="data order, adapters, dropout"), *DEVICE]),
    "reward": ("commands:reward", "comparisons from the SFT model, then the reward model, measured on held-out users", [
        opt("--out", help="folder for the reward model (adapter or weights, head, metrics)"),
        opt("--n-prompts", alias="reward.n_prompts", type=at_least(1), help="ranked training prompts"),
        opt("--shuffled", action="store_true", alias=lambda p: ["reward.grouped=false"],
            help="the ablation: pairs shuffled as independent examples"),
        opt("--full", action="store_true", alias=lambda p: ["reward.lora=false"], help=FULL),
        opt("--epochs", alias="reward.epochs", type=at_least(1), help="passes over the comparisons"),
        opt("--lr", alias="reward.lr", type=number(positive=True), help="peak learning rate"),
        opt("--policy", metavar="PATH", help="a second round: rank this saved policy's answers on the training "
            f"prompts the first round left ({SAVED_POLICY}) and train on both rounds"),
        opt("--policy-prompts", choices=("unranked", "all"), default="unranked",
            help="with --policy: the prompts the first round left (default), or every training prompt"), *DEVICE]),
    "ppo": ("commands:ppo", "PPO (or PPO-ptx) from the SFT model against the cached (or a saved) reward model", [
        opt("--out", help="folder for checkpoints and the final adapter"),
        opt("--resume", action="store_true", help="continue the interrupted run whose checkpoints are in --out"),
        opt("--steps", alias="ppo.steps", type=at_least(1), help="PPO iterations"),
        opt("--ptx", alias="ppo.ptx_coef", type=number(), help="γ of PPO-ptx (0: plain PPO)"),
        opt("--beta", alias="ppo.init_kl_coef", type=number(), help="the KL coefficient β"),
        opt("--seed", alias="ppo.seed", type=at_least(0), help="the PPO seed"),
        opt("--reward-model", nargs="+", metavar="PATH", help="train against these saved reward models (`reward "
            "--out PATH`) instead of the cached one; several are read as one ensemble (--combine)"),
        opt("--combine", choices=("mean", "min"), help="how several reward models' rewards combine: their mean (the "
            "default) or their minimum, worst-case optimisation (Coste et al. 2023)"),
        opt("--init", metavar="PATH", help=f"start from this saved policy ({SAVED_POLICY}; Llama 2's order) instead "
            "of the SFT model; it is also the KL reference"), *DEVICE]),
    "dpo": ("commands:dpo", "Direct Preference Optimization on the cached comparisons (notebook 07's run)", [
        opt("--out", required=True, help="folder for the adapter and the training history"),
        opt("--beta", alias="dpo.beta", type=number(positive=True), help="β, the implicit KL leash"),
        opt("--n-prompts", alias="dpo.n_prompts", type=at_least(1), help="train on the first N ranked prompts"),
        *DEVICE]),
    "rejection-sampling": ("commands:rejection_sampling", "Llama 2's rejection-sampling fine-tuning: LoRA on the SFT "
                           "model trained on its best-of-n answers as the cached reward model picks them", [
        opt("--out", required=True, help="folder for the adapter and the kept answers"),
        opt("--n", type=at_least(1), default=8, help="samples per prompt (default 8)"),
        opt("--n-prompts", type=at_least(0), default=0, help="the first N training prompts (default 0: all)"),
        opt("--epochs", type=at_least(1), default=2, help="passes over the kept answers (default 2)"),
        opt("--init", metavar="PATH", help="sample from this saved policy (an earlier `rejection-sampling --out "
            "PATH`: Llama 2's next round) instead of the SFT model"), *DEVICE]),
    "pipeline": ("commands:pipeline", "the main job: SFT → comparisons → RM → PPO and PPO-ptx → evaluation", [
        opt("--profile", default=argparse.SUPPRESS, help="tiny, smoke, gpt2, gpt2-smoke, gpt2-hub or gpt2-hub-smoke "
            "(default: $RLHF_LITE_PROFILE, else tiny; real data: the reward model judges)"),
        opt("--out", help="folder for metrics.json, plots and logs (default runs/<timestamp>)"),
        opt("--seed", type=at_least(0), default=0, help="seed of every stage (default 0); same seed, same metrics"),
        *DEVICE]),
    "evaluate": ("commands:evaluate", "gold-panel score of a model's responses on test prompts", [
        opt("--model", help="'tiny', a folder, or a hub name (default: the profile's base model)"),
        opt("--n", type=at_least(1), default=200, help="test prompts to score (default 200)"),
        opt("--k", type=at_least(1), default=2, help="2: also measure panel agreement on pairs of samples; 1: skip"),
        opt("--examples", type=at_least(0), default=4, help="sample responses to print"),
        WORLD_SEED, opt("--seed", type=at_least(0), default=0, help="sampling seed (default 0)"), *DEVICE]),
    "diagnose": ("course.diagnose:diagnose", "where the signal gets lost: fact and passage recall, off-task answers, "
                 "the reward model's agreement with the gold panel per criterion (cached stages)", [
        opt("--facts", type=at_least(1), default=400, help="facts to probe, and as many passages (default 400)"),
        opt("--min-gap", type=number(), default=0.1, help="smallest gold difference of a pair that counts"),
        opt("--reward-model", nargs="+", metavar="PATH",
            help="diagnose these saved reward models instead of the cached one (an ensemble if several)"),
        opt("--against", nargs="+", metavar="PATH", help="compare the held-out labelers' agreement with these saved "
            "reward models' (the difference on the same pairs, 95 %% paired bootstrap)"),
        opt("--examples", type=at_least(0), default=0, metavar="N", help="pairs per criterion ordered wrongly"),
        opt("--policy", nargs="+", metavar="PATH", help=f"set these saved policies ({SAVED_POLICY}) beside best-of-n "
            "of the SFT model, in reward and in gold"),
        opt("--n", type=at_least(1), default=300, help="test prompts for --policy (default 300)"), *DEVICE]),
    "save-stages": ("course.saved:save_stages_command", "keep the cached SFT model, comparisons and reward model with "
                    "the notebooks (notebooks/saved/PROFILE), where RERUN = False restores them from", []),
    "student-notebooks": ("course.student:student_notebooks_command", "write the notebooks with solution regions "
                          "replaced by stubs, outputs cleared", [
        opt("--out", required=True, help="folder for the student notebooks (not the notebooks folder itself)"),
        opt("--src", help="folder of the solution notebooks (default: the course's notebooks/)")]),
    "homework": ("course.homework:homework_command", "write an nbgrader course folder: the notebooks as source "
                 "assignments, a config for generate_assignment and autograde (needs the instructor extra)", [
        opt("--out", required=True, help="the course folder to write"),
        opt("--notebooks", nargs="+", metavar="NN", help="only these notebooks (e.g. 00 05; default: all)")]),
    "grade": ("course.grader:grade_command", "grade the implement-exercises of students' notebooks, each answer in "
              "a fenced-in process", [
        opt("notebooks", nargs="+", help="notebook files to grade (named as the course's notebooks)"),
        opt("--course", help="folder of the course notebooks the exercises are read from (default: notebooks/)")]),
    "bench": ("tools.bench:bench_command", "our trainers vs TRL's on the same model and data: rates, peak memory", [
        opt("--model", default="tiny", choices=["tiny", "gpt2-shape"],
            help="tiny (the shipped model) or gpt2-shape (GPT2Config(), random weights, the real tokenizer)"),
        opt("--device", default="cpu", choices=["cpu", "cuda"]),
        opt("--out", help="JSON file for the result (default runs/bench-MODEL-DEVICE.json)"),
        opt("--repeats", type=at_least(1), help="timed repetitions per row (default: the preset's)"),
        opt("--smoke", action="store_true", help="smallest sizes, one repetition (what the tests run)"),
        opt("--rows", nargs="+", default=["sft", "reward", "dpo", "rl"], choices=["sft", "reward", "dpo", "rl"]),
        opt("--markdown", action="store_true", help="print the table as Markdown")]),
    "gpt2-shape": ("tools.gpt2_shape:gpt2_shape_command", "write a GPT-2-shaped model (random weights, the real "
                   "tokenizer from ../shared/gpt2-tokenizer): an offline stand-in for the hub's gpt2", [
        opt("--out", required=True, help="folder to write"),
        opt("--small", action="store_true", help="2 layers of width 64 instead of GPT-2's 12 of 768")]),
    "memory-plan": ("tools.memory_plan:memory_plan_command", "each stage's peak GPU memory for the GPT-2 profiles on "
                    "a 16 GB T4, by calculation (the README's table)", []),
    "repo-url": ("tools.repo:repo_url_command", "point the notebooks' Colab cells and the README's badges at a fork",
                 [opt("url", help="https://github.com/OWNER/NAME")]),
    "notebook-times": ("tools.notebook_times:notebook_times_command", "each notebook's wall time: executed now on a "
                       "profile, or as recorded", [
        opt("--profile", dest="notebook_profile", default="smoke", help="profile to execute them on (default smoke)"),
        opt("--recorded", action="store_true", help="read the time stamps of the committed notebooks instead"),
        opt("--only", nargs="+", metavar="NN", help="only the notebooks whose names start with these, e.g. 00 05"),
        opt("--out", help="JSON file for the result (default runs/notebook-times-PROFILE-MODE.json)")]),
    "browser-check": ("tools.browser:browser_check_command", "open every notebook in JupyterLab in headless Chromium: "
                      "screenshots, page checks, one ranking clicked through notebook 03's widget", [
        opt("--out", default="runs/browser-check", help="folder for the screenshots"),
        opt("--chromium", default="chromium", help="the browser executable (default: chromium on PATH)")]),
}


def parser() -> tuple[argparse.ArgumentParser, dict]:
    """The argument parser, and the alias options' destinations → what ``--set`` fields they stand for."""
    p = argparse.ArgumentParser(prog="python -m rlhf_lite", description="rlhf-lite: InstructGPT's pipeline, small "
                                "enough to read and run. The main job: `python -m rlhf_lite pipeline`.")
    p.add_argument("--profile", default=None, help="smoke, tiny, gpt2, gpt2-smoke, gpt2-hub or gpt2-hub-smoke "
                   "(default: $RLHF_LITE_PROFILE, else tiny)")
    p.add_argument("--base-model", default=None, metavar="PATH", help="the GPT-2 profiles' base model: a folder with "
                   "its weights and tokenizer, or a hub name (default: $RLHF_LITE_BASE_MODEL, else gpt2)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one of the profile's settings, e.g. --set reward.epochs=2 (repeat it for more; "
                   "sections: world, pretrain, sft, reward, ppo, dpo, grpo, lora; added to $RLHF_LITE_SET); the "
                   "cached stages are keyed on every setting, so changed ones train again")
    sub, aliases = p.add_subparsers(dest="cmd", required=True), {}
    for name, (target, help_text, options) in COMMANDS.items():
        s = sub.add_parser(name, help=help_text, description=help_text)
        s.set_defaults(target=target)
        for names, alias, kw in options:
            if alias is not None:
                kw["dest"] = f"alias_{len(aliases)}"
                if kw.get("action") != "store_true":
                    kw.setdefault("metavar", names[0].lstrip("-").upper().replace("-", "_"))
                aliases[kw["dest"]] = alias
                kw["help"] += f" (= --set {alias}=…)" if isinstance(alias, str) else ""
            s.add_argument(*names, **kw)
    return p, aliases


def main(argv: list[str] | None = None) -> int:
    p, aliases = parser()
    args = p.parse_args(argv)
    try:
        module, _, name = args.target.partition(":")
        fn = getattr(importlib.import_module(f"rlhf_lite.{module}"), name)
        params = inspect.signature(fn).parameters
        kwargs = {k: v for k, v in vars(args).items() if k in params and k != "profile"}
        if "profile" in params:
            from .config import get_profile, override

            profile = get_profile(args.profile, args.base_model)
            settings = list(args.set)
            for dest, alias in aliases.items():
                value = getattr(args, dest, None)
                if value not in (None, False):
                    settings += [f"{alias}={value}"] if isinstance(alias, str) else alias(profile)
            if settings:
                print(f"settings changed from the profile's: {' '.join(settings)}", file=sys.stderr)
            kwargs["profile"] = override(profile, " ".join(settings), source="--set")
        if kwargs.get("device") is not None and args.cmd != "bench":
            from .runtime import pick_device

            pick_device(kwargs["device"])  # a missing GPU or a typo stops here, before any work
        result = fn(**kwargs)
        return result.get("exit", 0) if isinstance(result, dict) else 0
    except (ValueError, OSError, FloatingPointError, TypeError) as e:
        if not raised_by_us(e):
            raise  # a bug, ours or a library's: the traceback says where
        print(f"error: {e}", file=sys.stderr)  # a message we wrote for the user: one line, no traceback
        return 2


def raised_by_us(e: BaseException) -> bool:
    """True when the exception was raised by a ``raise`` in this package (a checked setting, a bad file, a NaN
    stop): those messages are written for users. Anything raised deep inside a library is shown in full."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    package = Path(__file__).resolve().parent
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(package)


if __name__ == "__main__":
    sys.exit(main())
