"""Training an Infusion concept: the residual vectors only, on a frozen model.

templates.py   the caption templates (the authors' 11 by default)
data.py        photos to square crops, masks to loss weights, the photo hash
photo_folder.py  reading a folder of photos (PIL)
objective.py   the loss in the model's own prediction space (eps or v), mask-weighted
state.py       the resume state and its atomic save/load
loop.py        the seeded, resumable, cancel-safe AdamW loop (plain PyTorch)
vectors.py     residual parameters <-> concept
encoding.py    photos and captions encoded once (ComfyUI VAE and CLIP)
comfy_model.py the loop run inside ComfyUI's guider and batched model call
session.py     one run as the node sees it: files, metadata, errors
loss_plot.py   the loss curve picture
"""
