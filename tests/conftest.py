import pytest

from rlhf_lite.config import get_profile
from rlhf_lite.tools.gpt2_shape import GPT2_TOKENIZER, write_gpt2_shape
from rlhf_lite.world import build_world


@pytest.fixture(scope="session")
def small_gpt2(tmp_path_factory):
    """A GPT-2-shaped model with random weights, 2 layers of width 64, and GPT-2's real tokenizer: the GPT-2
    profiles' code path offline (`--base-model`). Tests that use it are skipped without ../shared/gpt2-tokenizer."""
    if not GPT2_TOKENIZER.is_dir():
        pytest.skip("../shared/gpt2-tokenizer not present")
    return write_gpt2_shape(tmp_path_factory.mktemp("gpt2") / "small-gpt2", small=True)


@pytest.fixture(scope="session")
def world():
    """The smoke profile's world: seed 0 (the shipped model's world), fewer prompts."""
    wc = get_profile("smoke").world
    return build_world(wc.seed, wc.n_prompts, wc.mix)
