from __future__ import annotations

from comfy_api.latest import io

from ..infusion.patching import apply_concept
from ..infusion.concept_tools import layer_weights, rebind
from .load import INFUSION
from .word_clip import InfusionCLIP


class ApplyInfusion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ApplyInfusion",
            display_name="Apply Infusion to Model",
            category="Infusion",
            description="Make every prompt that says the concept's class word draw the concept. Prompts "
                        "without the word are drawn exactly as by the base model. Chain several to combine concepts.",
            inputs=[
                io.Model.Input("model", tooltip="The base model the concept was trained for (a model with the same "
                                                "attention layers: any fine-tune of its family)."),
                io.Clip.Input("clip", tooltip="Its CLIP. Encode your prompts with the CLIP this node returns: "
                                              "it marks where the class word stands."),
                INFUSION.Input("infusion", tooltip="A concept from Load Infusion or Train Infusion Concept."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Scale of the concept's residual. 0 = base model; negative values "
                                       "push away from the concept."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001, optional=True,
                               tooltip="Fraction of the sampling schedule at which the concept starts acting."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001, optional=True,
                               tooltip="Fraction of the sampling schedule at which the concept stops acting."),
                io.String.Input("word", default="", optional=True,
                                tooltip="Bind the concept to another word than it was trained on ('puppy' for a "
                                        "'dog' concept); empty = its own. It then acts where the base model's "
                                        "attention puts that word."),
                io.String.Input("block_weights", default="", optional=True,
                                tooltip="Per-block strengths, as LoRA block-weight tools write them: "
                                        "'input=1, middle=0.5, output=1' (DiTs: 'double=1, single=0.5'; LTX-Video, "
                                        "Kandinsky 5: 'cross=1'), single layers ('output.3.0=0', 'single.7=0'), or "
                                        "one number per layer. Empty = 1 everywhere; a block at 0 is left untouched."),
            ],
            outputs=[io.Model.Output(), io.Clip.Output()],
        )

    @classmethod
    def execute(cls, model, clip, infusion, strength, start_percent=0.0, end_percent=1.0, word="",
                block_weights="") -> io.NodeOutput:
        concept = rebind(infusion, word) if word.strip() else infusion
        weights = layer_weights(block_weights, sorted(concept.values))
        patched = apply_concept(model, concept, strength, start_percent, end_percent, weights)
        return io.NodeOutput(patched, InfusionCLIP.with_word(clip, concept.word))


NODES: list[type[io.ComfyNode]] = [ApplyInfusion]
