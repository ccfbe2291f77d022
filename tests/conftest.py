import pytest

from rlhf_lite.config import get_profile
from rlhf_lite.world import build_world


@pytest.fixture(scope="session")
def world():
    """The smoke profile's world: seed 0 (the shipped model's world), fewer prompts."""
    wc = get_profile("smoke").world
    return build_world(wc.seed, wc.n_prompts, wc.mix)
