"""A toy world small enough that a diffusion model trained here truly knows it.

Scenes are one shape (square, ring, triangle, cross) of one colour (red, green, blue, yellow) on one
background (white, black, stripes, checks), drawn straight into SD1's 4-channel latent space at 16x16
(no VAE: the world lives in latent space). A base model (ComfyUI's own UNet and SD1 model classes) and
a text encoder of our construction (behind ComfyUI's SD1 tokenizer) are ComfyUI objects, so the pack's
nodes, ComfyUI's KSampler, its Train LoRA node and LoRA loading run on them as on a downloaded
checkpoint. A probe reads colour, shape, background and the concept's mark off any sample.

Modules: `scenes` (rendering and captions), `text` (the text encoder), `model` (building and loading
MODEL and CLIP), `probe` (the reader), `train` (training the base model and the probe, resumable).
Everything that touches ComfyUI imports it inside functions.
"""
