"""Infusion core: concepts, residual injection, training, metrics and the file format.

Plain PyTorch; ComfyUI is imported only inside functions that operate on its objects.
"""
from .concept import InfusionConcept
from .format import ConceptFileError, load_concept, save_concept
from .layers import FAMILIES, LayerId

__all__ = ["InfusionConcept", "ConceptFileError", "load_concept", "save_concept", "FAMILIES", "LayerId"]
