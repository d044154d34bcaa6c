"""Caption templates: the sentences the class word is trained in.

The defaults are the authors' 11 templates. One template is drawn per micro-batch from the
run's seeded generator, so every photo is seen in many phrasings and the residual learns the
concept, not one sentence.
"""
from __future__ import annotations

AUTHOR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a good photo of a {}",
    "the photo of a {}",
    "a good photo of the {}",
    "image of a {}",
    "image of the {}",
    "A photograph of {}",
    "A {} shown in a photo",
    "A photo of {}",
    "A {}",
    "{}",
)

PLACEHOLDER = "{}"


def parse_templates(text: str) -> list[str]:
    """One template per non-empty line; each must hold the placeholder {} where the class word goes."""
    templates = [line.strip() for line in text.splitlines() if line.strip()]
    if not templates:
        raise ValueError("no caption templates: give one per line, each with {} where the class word goes, "
                         "e.g. 'a photo of a {}'")
    for line in templates:
        if PLACEHOLDER not in line:
            raise ValueError(f"caption template '{line}' has no {{}}: write {{}} where the class word goes")
    return templates


def fill(template: str, word: str) -> str:
    """The caption for one template. Plain replacement: other braces in a template stay as written."""
    return template.replace(PLACEHOLDER, word)
