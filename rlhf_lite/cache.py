"""Cache keys: a cached stage, or a notebook cell's saved result, is reused only for the same settings, the same data
and the same code.

* :func:`config_key` hashes settings (dataclasses, strings, numbers);
* :func:`code_digest` hashes the source of ``rlhf_lite`` modules *and of every package module they import*,
  directly or not, read from the import graph (:func:`import_closure`), so an edit anywhere under a stage (a loss,
  the learning-rate schedule, a file reader) retrains it;
* :func:`data_digest` hashes a local data file's bytes, :func:`base_digest` a local base model's weights;
* :func:`base_key`, :func:`sft_key`, :func:`comparisons_key` and :func:`reward_key` combine them for each cached
  stage of :mod:`rlhf_lite.stages`.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
from functools import lru_cache
from pathlib import Path

from .config import Profile
from .files import file_digest
from .models import TINY_BASE
from .runtime import placement

PACKAGE = Path(__file__).resolve().parent
STAGE_CODE = ("stages",)
"""The code every cached stage is keyed on: :mod:`rlhf_lite.stages` and everything it imports."""


def config_key(*configs) -> str:
    """A short hash of dataclass configs and plain values: cached outputs are reused only for identical settings."""
    blob = json.dumps([dataclasses.asdict(c) if dataclasses.is_dataclass(c) else c for c in configs], sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _module_file(name: str) -> Path | None:
    """``"sft"`` → rlhf_lite/sft.py, ``"world"`` → rlhf_lite/world/__init__.py; None if there is no such module."""
    path = PACKAGE / name
    if path.is_dir() and (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _normal(parts: list[str]) -> str | None:
    """The module name (``"world/tasks"``) for a dotted path inside the package, or None if it is not a module."""
    name = "/".join(p for p in parts if p)
    return name if name and _module_file(name) else None


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except what sits under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


@lru_cache(maxsize=None)
def _imports(name: str, source: str) -> frozenset[str]:
    """The package modules that module ``name`` imports anywhere in its source (``source``: for the cache)."""
    here = name.split("/") if _module_file(name).name == "__init__.py" else name.split("/")[:-1]
    found = set()
    for node in _runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif (node.module or "").split(".")[0] == "rlhf_lite":
                base = node.module.split(".")[1:]
            else:
                continue
            found.add(_normal(base))
            found.update(_normal(base + [a.name]) for a in node.names)  # `from . import world` names a module
        elif isinstance(node, ast.Import):
            found.update(_normal(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "rlhf_lite")
    return frozenset(m for m in found if m)


def import_closure(*names: str) -> list[str]:
    """Every package module that the modules ``names`` are made of: themselves, and what they import, directly or
    not. A package (``"world"``) counts all its files."""
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        file = _module_file(name)
        if file is None:
            raise ValueError(f"code_digest: no module rlhf_lite.{name.replace('/', '.')}")
        seen.add(name)
        if file.name == "__init__.py" and name in names:
            todo += [str(p.relative_to(PACKAGE).with_suffix("")) for p in file.parent.rglob("*.py")
                     if p.name != "__init__.py"]
        todo += sorted(_imports(name, file.read_text()))
    return sorted(seen)


def code_digest(*modules: str) -> str:
    """A short hash of the source of ``rlhf_lite`` modules and of everything they import from the package
    (:func:`import_closure`): part of every stage's cache key, so a cached model is reused only by the code that
    made it."""
    h = hashlib.sha256()
    for name in import_closure(*modules):
        file = _module_file(name)
        h.update(file.relative_to(PACKAGE).as_posix().encode() + b"\0" + file.read_bytes())
    return h.hexdigest()[:10]


def base_digest(name: str) -> str:
    """A short hash of a local base model's weights and tokenizer ("tiny": ``data/tiny-base``), so a rebuilt base
    model is never mistaken for the one a cached stage started from; "" for a hub name."""
    local = TINY_BASE if name == "tiny" else Path(name)
    files = [local / f for f in ("model.safetensors", "tokenizer.json")]
    if not all(f.is_file() for f in files):
        return ""
    return "".join(file_digest(f) for f in files)[:10]


def data_digest(source: str) -> str:
    """What a data source is, for a key: a named source ("tinyworld", "dolly", "hh-rlhf") as it is, a local file
    by its name and a hash of its bytes, so an edited file is never mistaken for the old one."""
    path = Path(source)
    return f"{path.name}:{file_digest(path)}" if path.is_file() else source


def device_tag(device: str, precision: str = "fp32") -> list[str]:
    """What a key adds for where a stage ran: nothing on the CPU, ``["cuda-bf16"]`` and the like on a GPU, whose
    floating-point results differ from the CPU's."""
    return [] if device == "cpu" else [f"{device.split(':')[0]}-{precision}"]


def where(device: str | None) -> list[str]:
    """:func:`device_tag` of the device a stage runs on (``None``: the default device) and its precision."""
    return device_tag(*placement(device))


def continues_pretraining(profile: Profile) -> bool:
    """True when the profile's base model must first learn TinyWorld's language: a hub model on TinyWorld data."""
    return profile.base_model != "tiny" and profile.data == "tinyworld"


def base_key(profile: Profile, device: str | None = "cpu") -> str:
    """The continued-pretraining key: the hub model (for a local one, its weights and tokenizer), the pretraining
    settings, the code, and (on a GPU) where it ran."""
    return f"base-{profile.name}-" + config_key(profile.base_model, base_digest(profile.base_model), profile.pretrain,
                                               code_digest(*STAGE_CODE), *where(device))


def sft_key(profile: Profile, device: str | None = "cpu") -> str:
    """The SFT key: the base model (for a local one, its weights and tokenizer; after continued pretraining, that
    stage's key), the demonstrations (``profile.data``, a local file by its contents), the world, the SFT and LoRA
    settings, the code, and (on a GPU) where it ran."""
    extra = [base_key(profile, device)] if continues_pretraining(profile) else []
    return f"sft-{profile.name}-" + config_key(profile.base_model, base_digest(profile.base_model),
                                              data_digest(profile.data), profile.world, profile.sft, profile.lora,
                                              code_digest(*STAGE_CODE), *extra, *where(device))


def comparisons_key(profile: Profile, sft_name: str, device: str | None = "cpu") -> str:
    """The comparisons' key: the SFT model they were sampled from, the world, every collection setting (K,
    temperature, response length, prompts, seed), the prompt format, the code, and (on a GPU) where it ran."""
    cfg = profile.reward
    collection = {k: getattr(cfg, k) for k in ("source", "n_prompts", "n_eval_prompts", "k_min", "k_max", "temperature",
                                                "max_new_tokens", "seed")}
    return f"comparisons-{profile.name}-" + config_key(sft_name, profile.world, collection, profile.sft.prompt_format,
                                                      code_digest(*STAGE_CODE), *where(device))


def reward_key(profile: Profile, sft_name: str, upstream: str, device: str | None = "cpu") -> str:
    """The reward model's key: the SFT model, the comparisons (``upstream``: their cache folder, or the data
    source, a local file by its contents), the reward and LoRA settings, the prompt format, the code, and
    (on a GPU) where it ran."""
    return f"reward-{profile.name}-" + config_key(sft_name, data_digest(upstream), profile.world, profile.reward,
                                                 profile.lora, profile.sft.prompt_format, code_digest(*STAGE_CODE),
                                                 *where(device))
