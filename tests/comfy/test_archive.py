"""What a user installs: the Comfy Registry archive as comfy-cli builds it (`comfy node pack`: the git-tracked
files minus .comfyignore) holds the product alone, and the pack loads and every node works from it alone."""
import os
import json
import subprocess
import sys
import textwrap
import zipfile

import pytest

from infusion_dev import comfy_harness as h

LEFT_OUT = ("infusion_dev/", "tests/", "benchmarks/", ".ci/")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """The archive's files, extracted into <tmp>/custom_nodes/ComfyUI-Infusion."""
    from comfy_cli.file_utils import zip_files

    tmp = tmp_path_factory.mktemp("archive")
    zip_path = tmp / "node.zip"
    cwd = os.getcwd()
    os.chdir(h.PACK_ROOT)  # comfy-cli packs the current directory, as `comfy node pack` does
    try:
        zip_files(str(zip_path))
    finally:
        os.chdir(cwd)
    pack = tmp / "custom_nodes" / "ComfyUI-Infusion"
    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
        z.extractall(pack)
    return pack, names, zip_path.stat().st_size


def test_the_archive_holds_the_product_alone(archive):
    _, names, size = archive
    assert not [n for n in names if n.startswith(LEFT_OUT) or (n.startswith("docs/") and n.endswith(".png"))]
    assert {"__init__.py", "pyproject.toml", "README.md", "LICENSE", "nodes/train.py", "infusion/format.py",
            "workflows/train_concept.json"} <= set(names)
    assert size < 1_000_000, f"the archive is {size} bytes"


def test_the_package_never_imports_the_development_package_or_the_tests():
    for folder in ("infusion", "nodes"):
        for root, _, files in os.walk(os.path.join(h.PACK_ROOT, folder)):
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(root, name), encoding="utf-8") as f:
                        text = f.read()
                    assert "infusion_dev" not in text and "tests/" not in text, os.path.join(root, name)


def test_every_node_works_from_the_archive_alone(archive, comfy_path, tmp_path):
    """A fresh process loads the pack from the extracted archive (its `infusion` first on the path, so nothing
    comes from this checkout but the development tools) and runs the smoke check: every example workflow
    and Save Infusion, through ComfyUI's executor."""
    pack, _, _ = archive
    script = textwrap.dedent(f"""
        import asyncio, json, sys
        sys.path[:0] = [{str(pack)!r}, {h.PACK_ROOT!r}]
        from infusion_dev import comfy_harness as h
        h.setup_comfy({comfy_path!r})
        module = h.load_pack({str(pack)!r})
        import infusion, nodes
        assert infusion.__file__.startswith({str(pack)!r}), infusion.__file__
        asyncio.run(nodes.init_builtin_extra_nodes())
        from infusion.cli.executor import Runner
        from infusion_dev.smoke import Smoke
        kinds = [k for k, cls in nodes.NODE_CLASS_MAPPINGS.items() if cls.__module__.startswith(module.__name__)]
        print("nodes from the archive:", json.dumps(sorted(kinds)))
        Smoke.prepare(Runner()).run_all()
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=h.HANG)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    kinds = json.loads(done.stdout.split("nodes from the archive:")[1].split("\n")[0])
    assert kinds == sorted(["ApplyInfusion", "BlendInfusionConcepts", "InfusionConceptInfo", "InfusionLatentFisherDivergence",
                            "InfusionWasserstein", "LoadConceptPhotos", "LoadInfusion", "SaveInfusion", "TrainInfusion"])
    for step in ("train_concept (dog)", "generate_with_concept", "prompt without the word", "multi_concept",
                 "blend_concepts", "measure_overfitting", "Save Infusion"):
        assert f"ok   {step} (" in done.stdout, done.stdout
