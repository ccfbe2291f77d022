"""pytest setup for tests/ and the notebooks (nbval-lax): the `smoke` profile, offline, quiet, a fresh cache.

Environment variables set here are inherited by the Jupyter kernels nbval starts.
"""
import atexit
import os
import shutil
import tempfile

os.environ["RLHF_LITE_PROFILE"] = "smoke"
# a fresh cache of stage outputs (SFT model, comparisons, reward model) for every test run: a test never reuses a
# model that older code trained, and the repository's runs/ folder is left alone
os.environ["RLHF_LITE_RUNS"] = tempfile.mkdtemp(prefix="rlhf-lite-test-runs-")
atexit.register(shutil.rmtree, os.environ["RLHF_LITE_RUNS"], ignore_errors=True)
# likewise for the results heavy notebook cells save (notebooks/saved/ holds the committed tiny ones)
os.environ["RLHF_LITE_SAVED"] = tempfile.mkdtemp(prefix="rlhf-lite-test-saved-")
atexit.register(shutil.rmtree, os.environ["RLHF_LITE_SAVED"], ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")            # no machine here reaches a model hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")              # progress bars are for people, not logs
os.environ.setdefault("MPLBACKEND", "Agg")
# pytest-xdist (`-n` in pyproject.toml): each worker process imports this file, so each has its own cache above, and
# the cores are shared out between the workers (and the kernels and subprocesses they start) rather than
# oversubscribed; a torch with 2 threads per worker on 2 cores runs slower than 1
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))


def pytest_collection_modifyitems(config, items):
    """Executing a notebook (nbval) trains smoke models: slow, so `pytest -m "not slow"` skips the notebooks; they are
    also marked `notebook` (`-m "not slow or notebook"`: the fast tests and the notebooks named)."""
    import pytest

    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.notebook)
