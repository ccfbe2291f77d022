"""Where the stages run: device and precision choice, and the cache keys of CPU runs left as they were."""
import pytest
import torch

from rlhf_lite import cache
from rlhf_lite.cache import device_tag
from rlhf_lite.config import get_profile
from rlhf_lite.runtime import course_precision, pick_device, pick_precision

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the messages of a machine without a GPU")


def test_auto_is_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.delenv("RLHF_LITE_DEVICE", raising=False)
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device() == pick_device("auto") == pick_device("") == want
    assert pick_device("cpu") == "cpu"
    monkeypatch.setenv("RLHF_LITE_DEVICE", "cpu")
    assert pick_device() == "cpu"  # the environment decides when no argument does


def test_a_typo_names_the_setting_and_the_choices(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown device 'gpu' \(from --device\); use auto, cpu, cuda"):
        pick_device("gpu")
    monkeypatch.setenv("RLHF_LITE_DEVICE", "cuda:x")
    with pytest.raises(ValueError, match=r"'cuda:x' \(from \$RLHF_LITE_DEVICE\)"):
        pick_device()


@no_gpu
def test_asking_for_a_missing_gpu_is_an_error_not_a_fallback():
    with pytest.raises(ValueError, match="torch sees no CUDA GPU.*Colab: Runtime > Change runtime type"):
        pick_device("cuda")


@no_gpu
def test_missing_gpu_stops_the_command_before_any_work():
    from rlhf_lite.__main__ import main

    assert main(["pipeline", "--device", "cuda", "--out", "/nonexistent/never-written"]) == 2


def test_precision_is_fp32_on_the_cpu(monkeypatch):
    monkeypatch.delenv("RLHF_LITE_PRECISION", raising=False)
    assert pick_precision("cpu") == pick_precision("cpu", "auto") == pick_precision("cpu", "fp32") == "fp32"
    with pytest.raises(ValueError, match="bf16 is for GPUs"):
        pick_precision("cpu", "bf16")
    with pytest.raises(ValueError, match=r"unknown precision 'fp16'.*auto, fp32, bf16"):
        pick_precision("cpu", "fp16")
    with course_precision("cpu"):  # the CPU: no autocast at all, so CPU results stay bit for bit
        assert not torch.is_autocast_enabled("cpu") and not torch.is_autocast_enabled("cuda")


def test_cache_keys_gain_the_device_only_off_the_cpu():
    assert device_tag("cpu") == [] and device_tag("cpu", "fp32") == []
    assert device_tag("cuda", "bf16") == ["cuda-bf16"] and device_tag("cuda:1", "fp32") == ["cuda-fp32"]
    prof = get_profile("tiny")
    # the CPU's keys are the ones the committed stages carry (tests/test_saved.py checks the names themselves)
    assert cache.sft_key(prof) == cache.sft_key(prof, "cpu")
    sft = cache.sft_key(prof)
    assert cache.comparisons_key(prof, sft) == cache.comparisons_key(prof, sft, "cpu")


def test_a_gpu_run_is_cached_apart(monkeypatch):
    prof = get_profile("tiny")
    sft = cache.sft_key(prof)
    # a machine with a GPU, as far as the keys can tell
    monkeypatch.setattr(cache, "placement",
                        lambda device=None: ("cuda", "bf16") if device == "cuda" else ("cpu", "fp32"))
    assert cache.sft_key(prof, "cuda") != sft
    assert cache.reward_key(prof, sft, "c", "cuda") != cache.reward_key(prof, sft, "c")


def test_published_gpu_peaks_for_mfu():
    from rlhf_lite.tools.bench import gpu_peak_tflops

    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert gpu_peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0  # not the SXM part's peak
    assert gpu_peak_tflops("Tesla T4", "fp32") == 8.1 and gpu_peak_tflops("Tesla T4", "bf16") is None
    assert gpu_peak_tflops("Some Future GPU", "bf16") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (.ci/gpu-check runs it)")
def test_the_course_precision_on_a_gpu():
    from rlhf_lite.runtime import compute_dtype

    native_bf16 = torch.cuda.get_device_capability()[0] >= 8
    with course_precision("cuda"):
        assert torch.is_autocast_enabled("cuda") == native_bf16
        if native_bf16:
            assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert compute_dtype("cuda") == (torch.bfloat16 if native_bf16 else torch.float16)
