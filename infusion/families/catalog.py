"""What the pack does with every model family ComfyUI runs, by ComfyUI's name for it (its config class in
comfy/supported_models.py): served by an adapter, refused because a concept has nothing to act on there (the model
reads no prompt, or draws no picture), or refused with the reason it cannot be reached yet and what that would
take. docs/families.md is this table for users, and a test holds every family of the running ComfyUI to one row
here."""
from __future__ import annotations

# The adapter (its `name`) that serves each family.
SERVED: dict[str, str] = {
    **dict.fromkeys(("SD15", "SD20", "SD21UnclipL", "SD21UnclipH", "SD15_instructpix2pix", "SD_X4Upscaler", "SDXL",
                     "SDXLRefiner", "SDXL_instructpix2pix", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B"), "UNet"),
    **dict.fromkeys(("Flux", "FluxSchnell", "FluxInpaint", "Flux2", "Chroma", "ChromaRadiance", "LongCatImage",
                     "HunyuanImage21", "HunyuanImage21Refiner", "HunyuanVideo15", "HunyuanVideo15_SR_Distilled"),
                    "Flux"),
    **dict.fromkeys(("QwenImage", "MageFlow"), "Qwen-Image"),
    **dict.fromkeys(("ZImage", "ZImagePixelSpace"), "Lumina 2 / Z-Image"),
    "Krea2": "Krea 2",
    "LTXV": "LTX-Video",
    **dict.fromkeys(("WAN21_T2V", "WAN21_I2V", "WAN21_FunControl2V", "WAN22_T2V"), "Wan"),
    "AuraFlow": "AuraFlow",
    "SD3": "SD3",
    "Ideogram4": "Ideogram 4",
    "HiDream": "HiDream",
    **dict.fromkeys(("CogVideoX_T2V", "CogVideoX_I2V", "CogVideoX_Inpaint"), "CogVideoX"),
    **dict.fromkeys(("Kandinsky5", "Kandinsky5Image"), "Kandinsky 5"),
}

# Families a concept has nothing to act on: what each one is, and why.
NOTHING_TO_ACT_ON: dict[str, str] = {
    "LotusD": "Lotus depth and normal estimation, whose cross-attention reads a fixed embedding, not a prompt",
    "Stable_Zero123": "novel views of one image, whose cross-attention reads the image and the camera, not a prompt",
    "SVD_img2vid": "Stable Video Diffusion, whose cross-attention reads the input image, not a prompt",
    "SV3D_u": "orbit views of one image, whose cross-attention reads the image, not a prompt",
    "SV3D_p": "orbit views of one image, whose cross-attention reads the image, not a prompt",
    "Stable_Cascade_B": "Stable Cascade's decoder stage, which reads the prompt only as one pooled vector, no word",
    **dict.fromkeys(("StableAudio", "StableAudio3", "ACEStep", "ACEStep15", "MiniMaxMusic3"),
                    "an audio model: a concept is a word bound to what pictures show"),
    **dict.fromkeys(("Hunyuan3Dv2", "Hunyuan3Dv2_1", "Hunyuan3Dv2mini", "TripoSplat", "Trellis2"),
                    "a 3D model made from an image, reading no prompt"),
    "SeedVR2": "a video restorer, reading no prompt",
    "RT_DETR_v4": "an object detector, drawing no picture",
    "SAM3": "a segmentation model, drawing no picture",
    "SAM31": "a segmentation model, drawing no picture",
    "DepthAnything3": "a depth estimator, reading no prompt",
}

_NO_LABELS = "its attention calls carry no block labels and it offers no block patches, so no layer can be told apart"
_NO_OPTIONS = "calls its attention without transformer_options ({}), so no composable hook reaches the values"
_WAN = ("a Wan variant: {}; the Wan adapter serves Wan 2.1 / 2.2 text-, image- and text-image-to-video, and this "
        "variant has no test here, so it is refused rather than served untested")

# Text-to-image and text-to-video families not reached yet: (why, what it would take).
REFUSED: dict[str, tuple[str, str]] = {
    **dict.fromkeys(("PixArtAlpha", "PixArtSigma"),
                    ("its cross-attention " + _NO_OPTIONS.format("comfy/ldm/pixart"),
                     "patches on each cross-attention's key and value projections")),
    **dict.fromkeys(("HunyuanDiT", "HunyuanDiT1"),
                    ("its cross-attention " + _NO_OPTIONS.format("comfy/ldm/hydit"),
                     "patches on the key and value projections, and word positions in its BERT and mT5 rows")),
    "ErnieImage": ("it " + _NO_OPTIONS.format("comfy/ldm/ernie"), "patches on its value projections"),
    "GenmoMochi": ("its text rows come after the image rows in the joint sequence, where the override expects text "
                   "first", "an adapter placing the prompt after the image rows (and splitting queries there)"),
    **dict.fromkeys(("CosmosT2V", "CosmosI2V"), (_NO_LABELS, "a label on each of its layers")),
    "Stable_Cascade_C": (_NO_LABELS + "; its text rows follow the image rows",
                         "a label on each layer and a text-row offset"),
    "LTXAV": ("LTX-2 reads its prompt through Gemma 3 tokens, which this pack does not mark, in a video and an audio "
              "cross-attention per block", "Gemma 3 word positions (the LTX-Video adapter reaches its video "
              "cross-attentions)"),
    **dict.fromkeys(("CosmosT2IPredict2", "CosmosI2VPredict2", "Anima"),
                    ("its text cross-attention is reached through Cosmos's own attention patch, which this pack "
                     "does not install", "a Cosmos adapter on that patch, in text space as on UNets")),
    **dict.fromkeys(("HunyuanVideo", "HunyuanVideoI2V", "HunyuanVideoSkyreelsI2V"),
                    ("this pack does not mark words in its Llama tokens (it would read the CLIP-L ones, the wrong "
                     "rows)", "Llama word positions (the Flux adapter reaches its blocks on 0.33)")),
    "MiniMaxH3": ("its blocks carry no labels, and this pack does not mark words in its Qwen3-VL-32B tokens",
                  "block labels, word positions for its text encoder, and its fused qkv projection's value slice"),
    "PixelDiTT2I": (_NO_LABELS + "; this pack does not mark words in its Gemma-2 tokens",
                    "a label on each layer and Gemma-2 word positions"),
    "PiD": ("a latent decoder on PixelDiT's body: " + _NO_LABELS, "a label on each layer"),
    "HiDreamO1": ("its text's own attention pass goes around the override, so only image queries could see a concept",
                  "an image-queries-only adapter and word positions for its tokenizer"),
    "Lens": ("its text rows follow the image rows, and this pack does not mark words in its gpt-oss tokens",
             "a text-row offset and word positions for its tokenizer"),
    "Lumina2": ("ComfyUI's Lumina 2 reads Gemma-2 tokens, and this pack does not mark words in them (Z-Image, the "
                "same transformer with Qwen3, works)", "Gemma-2 word positions"),
    "Omnigen2": (_NO_LABELS + "; this pack does not mark words in its Qwen2.5-3B tokens",
                 "a label on each layer and word positions for its tokenizer"),
    "Boogu": (_NO_LABELS + "; its double blocks also run an image-only attention",
              "a label on each joint attention call and Qwen3-VL-8B word positions"),
    "JoyImage": ("its text rows come last in the joint sequence, and its image rotary kernel (comfy_kitchen rms_rope) "
                 "has no backward, so it cannot train", "a text-row offset, and a rotary kernel with a backward"),
    **{family: (_WAN.format(f"its model ({model}) adds blocks or inputs of its own to Wan's"),
                "a tiny model of its layout in the tests")
       for family, model in (("WAN21_CausalAR_T2V", "CausalWanModel, frame by frame"), ("WAN21_Vace", "VaceWanModel"),
                             ("WAN21_Camera", "CameraWanModel"), ("WAN22_Camera", "CameraWanModel"),
                             ("WAN22_S2V", "WanModel_S2V, with audio"), ("WAN21_HuMo", "HumoWanModel"),
                             ("WAN22_Animate", "AnimateWanModel"), ("WAN_Animate2", "WanAnimate2Model"),
                             ("WAN21_SCAIL", "SCAILWanModel"), ("WAN21_SCAIL2", "SCAIL2WanModel"),
                             ("WAN22_WanDancer", "WanDancerModel"))},
    "WAN21_FlowRVS": (_WAN.format("Wan's model as an image-to-image flow, which starts from the input video rather "
                                  "than from noise"), "a test of that flow"),
}


def refusal(family: str) -> str | None:
    """Why a model of `family` (ComfyUI's name) cannot take a concept, or None when it may."""
    if family in NOTHING_TO_ACT_ON:
        return (f"this is a {family} model ({NOTHING_TO_ACT_ON[family]}): an Infusion concept binds a word of "
                "a prompt to what a picture shows, so it has nothing to act on here")
    if family in REFUSED:
        why, needs = REFUSED[family]
        return f"this is a {family} model, which Infusion does not support yet: {why}. It would take {needs}"
    return None
