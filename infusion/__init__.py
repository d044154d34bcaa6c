"""Infusion core: concepts, residual injection, training, metrics and the file format.

Plain PyTorch; ComfyUI is imported only inside functions that operate on its objects. This
package file imports nothing, so `python -m infusion` and infusion.cli.locate can explain what
is missing (torch, ComfyUI) instead of failing on an import.
"""
