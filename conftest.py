"""pytest setup for tests/ and the notebooks (nbval-lax): the `smoke` profile, offline, quiet.

Environment variables set here are inherited by the Jupyter kernels nbval starts.
"""
import os

os.environ["RLHF_LITE_PROFILE"] = "smoke"
os.environ.setdefault("HF_HUB_OFFLINE", "1")            # no machine here reaches a model hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")              # progress bars are for people, not logs
os.environ.setdefault("MPLBACKEND", "Agg")
