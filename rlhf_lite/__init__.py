"""rlhf-lite: the InstructGPT pipeline (SFT, reward model, PPO with a KL penalty) small enough to read and run."""
import logging

# bitsandbytes (imported by peft when installed) warns at import time about an optional CPU kernel package that
# nothing here uses; library noise off, our own messages stay.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

__version__ = "0.1.0"

REPO_URL = "https://github.com/rlhf-lite/rlhf-lite"
"""The course's repository: what every notebook's Colab setup cell clones and every Colab badge in the README opens.
To point them at a fork, run ``python -m rlhf_lite repo-url https://github.com/you/rlhf-lite``: it rewrites this
line, the setup cells and the badges together (a test checks that they agree)."""
