"""The precision a run trains in: `auto` follows the model as ComfyUI's own trainer does; fp16 is refused on a
family ComfyUI never runs in fp16."""
import pytest
import torch

from infusion.training.precision import choose_precision

BF16_FP32 = [torch.bfloat16, torch.float32]


@pytest.mark.parametrize("compute, device, has_bf16, chosen", [
    (torch.float16, "cuda", True, "fp16"),      # an fp16 model: fp16 with loss scaling
    (torch.bfloat16, "cuda", True, "bf16"),
    (torch.float32, "cuda", True, "bf16"),      # as ComfyUI's trainer: bf16 for every model but fp16 ones
    (torch.float32, "cuda", False, "fp32"),     # a GPU without bf16
    (torch.bfloat16, "mps", True, "bf16"),
    (torch.float16, "cpu", False, "fp32"),      # ComfyUI computes in fp32 on the CPU
    (torch.bfloat16, "cpu", False, "fp32"),
])
def test_auto_follows_the_model_and_the_device(compute, device, has_bf16, chosen):
    assert choose_precision("auto", compute, device, "SDXL", None, has_bf16) == chosen


def test_a_precision_asked_for_by_name_is_used():
    for name in ("fp32", "bf16", "fp16"):
        assert choose_precision(name, torch.float16, "cpu", "SD15", [torch.float16, torch.float32], False) == name


def test_fp16_is_refused_on_a_family_comfyui_never_runs_in_fp16():
    with pytest.raises(ValueError, match="fp16 cannot train a QwenImage model: ComfyUI runs QwenImage only in "
                                         "bf16 or fp32 .*Choose auto or bf16"):
        choose_precision("fp16", torch.bfloat16, "cuda", "QwenImage", BF16_FP32, True)
    assert choose_precision("bf16", torch.bfloat16, "cuda", "QwenImage", BF16_FP32, True) == "bf16"
    assert choose_precision("auto", torch.bfloat16, "cuda", "QwenImage", BF16_FP32, True) == "bf16"


def test_an_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="auto, fp32, bf16, fp16"):
        choose_precision("fp8", torch.float32, "cpu", "SD15", None, False)
