"""Fixtures for the real-ComfyUI tests. Without a ComfyUI (or without torch) every module
in this folder is skipped at collection, before it is imported (so before it imports torch).
Set COMFYUI_REQUIRED=1 (e.g. in the CI job that has ComfyUI) to turn that skip into an error."""
import importlib.util
import os
import sys

import pytest

# Test modules import each other's helpers as top-level modules (works with --import-mode=importlib).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from infusion_dev import comfy_harness  # noqa: E402  (imports neither torch nor ComfyUI)

_REQUIRED = os.environ.get("COMFYUI_REQUIRED", "") not in ("", "0")


COMFYUI = comfy_harness.find_comfyui()
_missing = [m for m in ("torch", "torchvision", "safetensors", "einops", "transformers", "PIL", "yaml", "scipy",
                        "torchsde", "psutil", "aiohttp") if importlib.util.find_spec(m) is None]
if COMFYUI is None:
    SKIP_REASON = comfy_harness.absent_reason()
elif _missing:
    SKIP_REASON = f"ComfyUI found at {COMFYUI} but this Python lacks its dependencies: {', '.join(_missing)}"
else:
    SKIP_REASON = None
if SKIP_REASON and _REQUIRED:
    raise RuntimeError(f"COMFYUI_REQUIRED is set but: {SKIP_REASON}")


class _AbsentComfyUI(pytest.Item):
    def runtest(self):
        pytest.skip(SKIP_REASON)

    def reportinfo(self):
        return self.path, None, self.name


class _SkippedModule(pytest.Module):
    def collect(self):
        # Never imports the module (so never its top-level `import torch`); one skipped
        # item per module keeps pytest's exit status 0 (a collection-time skip gives 5).
        return [_AbsentComfyUI.from_parent(self, name="requires_real_comfyui")]


def pytest_pycollect_makemodule(module_path, parent):
    # A module-level skip in this conftest would crash `pytest tests/comfy` (it is then
    # an initial conftest), so each test module is replaced by a skipped stand-in.
    if SKIP_REASON:
        return _SkippedModule.from_parent(parent, path=module_path)
    return None


# The longest test files, longest first (as CI measured them on either version): with pytest-xdist (CI's two
# workers, whole files each, in this order) they start first, so that neither worker is left running one of them
# alone at the end.
LONGEST_FIRST = ("test_crash.py", "test_ray.py", "test_toyworld.py", "test_benchmarks_train.py", "test_workflows.py",
                 "test_dit.py", "test_toyworld_dit.py", "test_train_node.py", "test_browser.py", "test_benchmarks.py",
                 "test_benchmarks_dit.py", "test_train_planted.py", "test_benchmarks_toyworld.py", "test_archive.py",
                 "test_value_scale.py", "test_server.py", "test_apply.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def comfy_path() -> str:
    """ComfyUI root, imported on CPU with models/output/input/temp/user in a temp dir.
    ComfyUI is imported here (not at collection) so collecting other folders never pays for it."""
    try:
        return comfy_harness.setup_comfy(COMFYUI)
    except ImportError as e:
        if _REQUIRED:
            raise
        pytest.skip(f"ComfyUI at {COMFYUI} does not import in this Python: {e!r}")


@pytest.fixture(scope="session")
def pack(comfy_path):
    """This pack, loaded by ComfyUI's own nodes.load_custom_node (its sys.modules entry)."""
    if not os.path.isfile(os.path.join(comfy_harness.PACK_ROOT, "__init__.py")):
        pytest.skip("the pack has no __init__.py yet")
    return comfy_harness.load_pack()


@pytest.fixture(scope="session")
def tmp_models_dir(comfy_path) -> str:
    """ComfyUI's models dir for this session (a temp dir, never <ComfyUI>/models)."""
    return comfy_harness.models_dir()


# Model fixtures hand out clones of session-built models, so patches a test sets on
# its ModelPatcher/CLIP never leak into the next test (weights are shared: never
# modify them in place).

@pytest.fixture
def sd15(comfy_path):
    """(ModelPatcher, CLIP): tiny SD1.5, 16 cross-attn blocks, context 768."""
    model, clip = comfy_harness.tiny_sd15()
    return model.clone(), clip.clone()


@pytest.fixture
def sd2v(comfy_path):
    """(ModelPatcher, CLIP): tiny SD2.x v-prediction, 16 cross-attn blocks, context 1024."""
    model, clip = comfy_harness.tiny_sd2v()
    return model.clone(), clip.clone()


@pytest.fixture
def sdxl(comfy_path):
    """(ModelPatcher, CLIP): tiny SDXL, 70 cross-attn blocks, context 2048, pooled 1280."""
    model, clip = comfy_harness.tiny_sdxl()
    return model.clone(), clip.clone()


@pytest.fixture
def custom(comfy_path):
    """(ModelPatcher, CLIP): a tiny UNet of no ComfyUI family (7 cross-attn blocks, context 768)."""
    model, clip = comfy_harness.tiny_custom()
    return model.clone(), clip.clone()


@pytest.fixture
def vae(comfy_path):
    """comfy.sd.VAE: tiny KL autoencoder, 8x down, 4 latent channels (shared, stateless)."""
    return comfy_harness.tiny_vae()


@pytest.fixture(scope="session")
def sd15_checkpoint(comfy_path) -> str:
    """Path of a random-weight SD1.5 checkpoint in <tmp models>/checkpoints
    (CheckpointLoaderSimple name: comfy_harness.CHECKPOINT_NAME)."""
    return comfy_harness.tiny_sd15_checkpoint()


@pytest.fixture
def executor_mode():
    """Run the test body inside torch.inference_mode(), as ComfyUI's executor runs nodes."""
    with comfy_harness.executor_mode():
        yield
