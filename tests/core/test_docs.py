"""The README and the docs say what the code does: the training defaults as TrainingSettings holds them (the
node and the runner read them from there), links that lead somewhere, and a README a user reads through."""
import os
import re

from infusion.training.loop import TrainingSettings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def text_of(path: str) -> str:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def words_of(path: str) -> str:
    return " ".join(text_of(path).split())


def test_the_docs_state_the_training_defaults():
    d = TrainingSettings()
    batch = d.batch_size * d.gradient_accumulation
    assert (f"{d.steps} steps of {batch} photos, a learning rate of {d.learning_rate:g} on a {d.schedule}"
            in words_of("README.md"))
    assert f"{d.steps} steps of {batch}, learning rate {d.learning_rate:g} on a {d.schedule}" in words_of("docs/toyworld.md")


def test_the_readme_is_short_and_its_links_lead_somewhere():
    readme = text_of("README.md")
    assert len(readme.splitlines()) <= 250
    pages = ["README.md"] + [os.path.join("docs", n) for n in os.listdir(os.path.join(ROOT, "docs")) if n.endswith(".md")]
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text_of(page)):
            assert os.path.exists(os.path.join(ROOT, os.path.dirname(page), target)), f"{page} links to {target}"
