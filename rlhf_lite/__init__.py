"""rlhf-lite: the InstructGPT pipeline (SFT → reward model → PPO) rebuilt small enough to read and run."""

__version__ = "0.1.0"
