"""rlhf-lite: the InstructGPT pipeline (SFT, reward model, PPO with a KL penalty) small enough to read and run."""
import logging

# bitsandbytes (imported by peft when installed) warns at import time about an optional CPU kernel package that
# nothing here uses; library noise off, our own messages stay.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

__version__ = "0.1.0"
