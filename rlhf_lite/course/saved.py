"""Results saved with the notebooks: a heavy cell loads in seconds what it computed when the notebook was executed.

A notebook with such cells sets ``RERUN`` at its top: ``False`` (load everything saved), ``True`` (compute every
heavy cell again, and the stages the notebooks share when ``runs/cache`` lacks them), or a set of cell names, e.g.
``{"05-ppo-sweep"}`` (compute those cells alone; the rest loads). Then

* :func:`restore_stages` puts the SFT model, the comparisons and the reward model that the notebooks were executed
  with into ``runs/cache``, where :mod:`rlhf_lite.stages` finds them, instead of training them again;
* :func:`saved_cell` wraps a cell's heavy work: with ``rerun`` False and a result that this cell saved under the
  same settings, it loads that result; otherwise it does the work and saves the result for next time.

Saved results live in ``notebooks/saved/<profile>/`` (``$RLHF_LITE_SAVED`` moves it); those of ``tiny`` are
committed with the executed notebooks (a few MB: histories and tables as JSON inside safetensors files, trained
models as their LoRA adapters). A result is used only under its exact key: the cell's settings and the names of the
cached stages it started from, which hash the code that built them. Anything else runs again.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Collection

from ..cache import code_digest, comparisons_key, config_key, reward_key, sft_key, where
from ..checkpoint import load_trained_state
from ..config import Profile
from ..files import atomic_dir, foreign_files, load_state, save_state
from ..models import load_base
from ..runtime import course_precision, runs_dir
from ..sft import add_lora
from ..stages import SFT_ADAPTERS, base_checkpoint, write_sft_checkpoint

STAGES = "stages"


def saved_dir(profile: Profile) -> Path:
    """The folder of a profile's saved results: ``$RLHF_LITE_SAVED/<profile>``, else ``notebooks/saved/<profile>``
    in the repository."""
    root = os.environ.get("RLHF_LITE_SAVED") or Path(__file__).resolve().parents[2] / "notebooks" / "saved"
    return Path(root) / profile.name


class SavedResult(dict):
    """A cell's result (a dict), with ``loaded`` (True: read from the saved file) and ``seconds`` (how long
    computing it took when it was computed)."""
    loaded: bool = False
    seconds: float = 0.0


def reruns(name: str, rerun: bool | Collection[str]) -> bool:
    """Whether the cell ``name`` computes again under a notebook's ``RERUN``: ``True`` (every cell), ``False``
    (none) or a collection of cell names (those)."""
    if isinstance(rerun, bool):
        return rerun
    if isinstance(rerun, str):
        raise TypeError(f"RERUN = {rerun!r}: write a set of cell names, e.g. RERUN = {{{rerun!r}}}, or True / False")
    return name in rerun


def saved_cell(name: str, compute: Callable[[], dict], *, key, profile: Profile, rerun: bool | Collection[str],
               code: tuple[str, ...] = (), took: Callable[[dict], float] | None = None) -> SavedResult:
    """Run ``compute()`` (it returns a dict of numbers, strings, lists, dicts and tensors) and save its result as
    ``<saved_dir>/<name>.safetensors``; or, when ``rerun`` does not name this cell (:func:`reruns`) and that file
    holds a result saved under the same key, load it instead. The key hashes ``key`` (anything
    :func:`rlhf_lite.cache.config_key` takes: settings, upstream stage names), the profile's LoRA settings, the
    device (a GPU's results are not the CPU's) and the source of the package modules named in ``code`` and of
    everything they import (e.g. ``("ppo",)``). ``compute()`` runs in the course's precision
    (:func:`rlhf_lite.runtime.course_precision`), as the stages do.
    ``took(result)``, for work that ``compute`` may reuse from an earlier run (the pipeline's), gives the seconds
    the work itself took; by default it is how long ``compute()`` ran. Either way the result is a
    :class:`SavedResult`."""
    path = saved_dir(profile) / f"{name}.safetensors"
    device = where(None)
    digest = config_key(profile.name, name, *(key if isinstance(key, tuple) else (key,)), profile.lora,
                        *device, code_digest(*(c.replace(".", "/") for c in code)))  # "course.trl_bridge" too
    if not reruns(name, rerun) and path.is_file():
        state = load_state(path)
        if state.get("key") == digest:
            out = SavedResult(state["result"])
            out.loaded, out.seconds = True, state["seconds"]
            print(f"loaded this cell's saved result ({_show(path)}); computing it took {_duration(out.seconds)} "
                  f"on {profile.name}: set RERUN = {{{name!r}}} at the top to run this cell again")
            return out
        saved_on, here = state.get("device", ["cpu"]) or ["cpu"], device or ["cpu"]
        why = (f"was computed on {saved_on[0]}, this is {here[0]}" if saved_on != here
               else "is for other settings or code")
        print(f"the saved result in {_show(path)} {why}: computing this cell again (it took "
              f"{_duration(state['seconds'])} there)")
    t0 = time.time()
    with course_precision():  # on a GPU, the stages' precision (TF32, bf16 autocast where native); the CPU: as is
        result = _plain(compute())
    seconds = round(took(result) if took else time.time() - t0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_state(path, {"key": digest, "seconds": seconds, "device": device, "result": result})
    out = SavedResult(load_state(path)["result"])  # what loading gives, so both ways hand on the same objects
    out.seconds = seconds
    return out


def save_stages(profile: Profile) -> list[str]:
    """Copy the profile's cached stage outputs (those of the current code and settings) into the saved folder in
    their small forms: the SFT model as its LoRA adapters, the comparisons gzipped, the reward model as it is.
    Returns the names saved. Run it (``python -m rlhf_lite save-stages``) before committing executed notebooks."""
    sft_name, comp_name, rm_name = stage_names(profile)
    cache, dest = runs_dir() / "cache", saved_dir(profile) / STAGES
    dest.mkdir(parents=True, exist_ok=True)
    done = []
    src = cache / sft_name
    if (src / SFT_ADAPTERS).is_file():
        history = json.loads((src / "history.json").read_text())
        save_state(dest / f"{sft_name}.safetensors", {"adapter": load_state(src / SFT_ADAPTERS),
                                                      "history": history})
        done.append(sft_name)
    src = cache / comp_name
    if (src / "train.jsonl").is_file():
        with atomic_dir(dest / comp_name, "saved-comparisons") as tmp:
            for split in ("train", "validation"):
                with open(src / f"{split}.jsonl", "rb") as f, open(tmp / f"{split}.jsonl.gz", "wb") as raw, \
                        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as g:  # mtime 0: the same bytes every time
                    shutil.copyfileobj(f, g)
            shutil.copy(src / "info.json", tmp / "info.json")
        done.append(comp_name)
    src = cache / rm_name
    if (src / "reward_model.json").is_file():
        with atomic_dir(dest / rm_name, "saved-reward") as tmp:
            for f in src.rglob("*"):
                if f.is_file() and f.name not in ("README.md", ".rlhf-lite-output.json"):
                    (tmp / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(f, tmp / f.relative_to(src))
            # the SFT model by its folder name, not this machine's path (restore_stages points it at the runs folder)
            for name, field in (("reward_model.json", "base"),
                                ("adapter/adapter_config.json", "base_model_name_or_path")):
                if (tmp / name).is_file():
                    meta = json.loads((tmp / name).read_text())
                    meta[field] = sft_name
                    (tmp / name).write_text(json.dumps(meta, indent=1))
        done.append(rm_name)
    _prune(dest, profile, {sft_name + ".safetensors", comp_name, rm_name})
    return done


def restore_stages(profile: Profile, rerun: bool | Collection[str] = False) -> list[str]:
    """Put the saved stage outputs that match the current code and settings into ``runs/cache`` where they are
    missing, so :func:`~rlhf_lite.stages.sft_checkpoint`, :func:`~rlhf_lite.stages.comparison_data` and
    :func:`~rlhf_lite.stages.reward_checkpoint` find them. The SFT model is rebuilt from its adapters exactly (the
    same merge as after training). ``rerun`` True (a notebook's ``RERUN = True``): restore nothing, so the stages
    train again unless ``runs/cache`` holds them. Either way, a stage that will train first is named, before any
    work, with how long it took when it was saved. Returns the names restored."""
    done = [] if rerun is True else _restore(profile)
    missing = missing_stages(profile)
    if missing:
        why = "RERUN = True" if rerun is True else "nothing saved matches this device, these settings and this code"
        print(f"{why}: the notebook first trains " + ", ".join(missing))
    return done


def missing_stages(profile: Profile) -> list[str]:
    """The shared stages ``runs/cache`` lacks, each with the time its saved copy took (when there is one)."""
    sft_name, comp_name, rm_name = stage_names(profile)
    cache, src = runs_dir() / "cache", saved_dir(profile) / STAGES
    out = []
    for what, name, marker, took in (
            ("the SFT model", sft_name, "config.json",
             lambda: load_state(src / f"{sft_name}.safetensors")["history"]["wall_time_s"]),
            ("the comparisons", comp_name, "train.jsonl",
             lambda: json.loads((src / comp_name / "info.json").read_text())["seconds"]),
            ("the reward model", rm_name, "reward_model.json",
             lambda: json.loads((src / rm_name / "reward_model.json").read_text())["history"]["wall_time_s"])):
        if (cache / name / marker).is_file():
            continue
        try:
            out.append(f"{what} (it took {_duration(float(took()))} on {profile.name} when saved)")
        except (OSError, KeyError, ValueError):
            out.append(f"{what} (no saved copy to time it by)")
    return out


def _restore(profile: Profile) -> list[str]:
    """:func:`restore_stages`' copying."""
    sft_name, comp_name, rm_name = stage_names(profile)
    cache, src = runs_dir() / "cache", saved_dir(profile) / STAGES
    done = []
    if not (cache / sft_name / "config.json").is_file() and (src / f"{sft_name}.safetensors").is_file():
        if profile.sft.quantization != "none" or not profile.sft.lora:
            print(f"saved SFT adapters are for full-precision LoRA; profile {profile.name!r} trains its SFT model")
        else:
            state = load_state(src / f"{sft_name}.safetensors")
            model, tok = load_base(base_checkpoint(profile))  # the base it was trained on (after continued pretraining)
            model = add_lora(model, profile.sft, profile.lora)
            load_trained_state(model, state["adapter"], f"the adapters in {src / sft_name}.safetensors")
            write_sft_checkpoint(cache / sft_name, model, tok, state["history"], lora=True)
            done.append(sft_name)
    if not (cache / comp_name / "train.jsonl").is_file() and (src / comp_name / "train.jsonl.gz").is_file():
        with atomic_dir(cache / comp_name, "comparisons") as tmp:
            for split in ("train", "validation"):
                gz, plain = src / comp_name / f"{split}.jsonl.gz", tmp / f"{split}.jsonl"
                with gzip.open(gz, "rb") as g, open(plain, "wb") as f:
                    shutil.copyfileobj(g, f)
            shutil.copy(src / comp_name / "info.json", tmp / "info.json")
        done.append(comp_name)
    if not (cache / rm_name / "reward_model.json").is_file() and (src / rm_name / "reward_model.json").is_file():
        with atomic_dir(cache / rm_name, "reward") as tmp:
            shutil.copytree(src / rm_name, tmp, dirs_exist_ok=True)
            meta = json.loads((tmp / "reward_model.json").read_text())
            meta["base"] = str(cache / sft_name)  # the SFT model it sits on, in this machine's runs folder
            (tmp / "reward_model.json").write_text(json.dumps(meta, indent=1))
        done.append(rm_name)
    if done:
        print("restored the stages saved with the notebooks into runs/cache: " + ", ".join(done))
    return done


def _plain(x):
    """``x`` with every config dataclass inside turned into a dict (what a saved file can hold)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.asdict(x)
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v) for v in x)
    return x


def stage_names(profile: Profile) -> tuple[str, str, str]:
    """The cache folder names of the profile's SFT model, comparisons and reward model (TinyWorld comparisons)."""
    sft_name = sft_key(profile)
    comp_name = comparisons_key(profile, sft_name)
    return sft_name, comp_name, reward_key(profile, sft_name, comp_name)


def _prune(dest: Path, profile: Profile, keep: set[str]) -> None:
    """Remove saved stages of older code or settings (they can never be used again): only what ``save_stages``
    wrote, named as it names them and holding its marks; any other file in ``dest`` is left alone."""
    name = re.compile(rf"(sft|comparisons|reward)-{re.escape(profile.name)}-[0-9a-f]{{10}}(\.safetensors)?")
    for p in dest.iterdir():
        if p.name in keep or not name.fullmatch(p.name) or p.is_symlink():
            continue
        if p.is_dir() and not foreign_files(p, f"saved-{p.name.split('-')[0]}"):
            shutil.rmtree(p)
        elif p.is_file() and p.suffix == ".safetensors":
            try:
                load_state(p)
            except ValueError:  # not a saved stage
                continue
            p.unlink()


def _show(path: Path) -> str:
    """A path as a notebook prints it: relative to the current folder (``saved/tiny/…`` from ``notebooks/``)."""
    return os.path.relpath(path)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def save_stages_command(profile: Profile) -> dict:
    """``save-stages``: :func:`save_stages`, with what was saved printed; fails (exit 1) when a stage is missing."""
    names = save_stages(profile)
    for name in names:
        print(f"saved {name}")
    missing = 3 - len(names)
    note = f"; {missing} stage(s) not cached under these settings yet (run the pipeline or the notebooks first)"
    print(f"written to {saved_dir(profile) / STAGES}" + (note if missing else ""))
    return {"saved": names, "exit": 1 if missing else 0}
