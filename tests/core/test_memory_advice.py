"""What an out-of-memory pause tells the user to lower: what truly helps, cheapest first (time before what the
run learns from), and nothing that cannot apply."""
from infusion.training.loop import TrainingSettings
from infusion.training.session import TrainingRequest, out_of_memory_advice


def advice(device: str = "cuda", fp8: bool = False, checkpointing: bool = True, **settings) -> list[str]:
    request = TrainingRequest(word="dog", name="rex", folder="/tmp", gradient_checkpointing=checkpointing,
                              settings=TrainingSettings(**settings))
    text = out_of_memory_advice(request, "the last step (step 2) is kept", device, fp8)
    return text.split("run again with resume on: ")[1].split("; or ")


def test_everything_that_helps_in_the_order_that_costs_the_least():
    tips = advice(checkpointing=False, precision="fp32", batch_size=4)
    assert [t.split(" (")[0] for t in tips] == [
        "gradient_checkpointing on", "batch_size 2 with gradient_accumulation 2", "precision auto",
        "a lower resolution", "the model's weights in fp8"]


def test_nothing_that_cannot_help():
    # checkpointing already on, a batch of one, half precision, fp8 weights: a lower resolution is what is left
    assert advice(fp8=True, precision="bf16", batch_size=1) == ["a lower resolution"]
    # on the CPU there is no half precision to switch to, nor fp8 weights to save memory with
    assert advice(device="cpu", precision="fp32", batch_size=1) == ["a lower resolution"]
