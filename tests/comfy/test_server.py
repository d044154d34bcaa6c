"""The pack in a real ComfyUI server, driven over its HTTP and websocket API as the frontend drives it.

main.py runs with the pack linked into a temporary base directory, a tiny SD1.5 checkpoint and a folder
of photos. Each test queues the train_concept example (at smoke size) with POST /prompt and follows the
websocket: progress reaches the total and previews arrive; POST /interrupt stops a long run and keeps
its last step; a prompt queued again is taken from ComfyUI's cache until a photo or a caption changes,
and then the concept is trained on the new photos.
"""
import asyncio
import json
import os
import uuid

import pytest
from safetensors import safe_open

from infusion_dev import comfy_harness as h

from infusion_dev import smoke, tiny_models
from infusion_dev.overrides import set_input


@pytest.fixture(scope="module")
def server(pack, comfy_path, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("comfyui_server"))
    tiny_models.write_tiny_sd15_checkpoint(os.path.join(base, "models", "checkpoints", smoke.CHECKPOINT))
    photos = tiny_models.write_concept_photos(os.path.join(base, "input", "rex"))
    with h.Server(comfy_path, base) as running:
        running.photos = photos
        yield running


def training_prompt(server, output_name, **settings):
    """train_concept at smoke size on the server's photos; returns (prompt, Train Infusion Concept's id)."""
    prompt, definitions = smoke.smoke_prompt("train_concept")
    train_id = smoke.nodes_of(prompt, "TrainInfusion")[0]
    set_input(prompt, definitions, smoke.nodes_of(prompt, "LoadConceptPhotos")[0], "folder", server.photos)
    for key, value in {"output_name": output_name, **settings}.items():
        set_input(prompt, definitions, train_id, key, value)
    return prompt, train_id


async def _follow(server, prompt, on_message=None, timeout=h.HANG):
    """Queue `prompt` and collect the websocket's messages for it until it ends (success, error or
    interruption), failing when `timeout` seconds pass without one. Binary messages (previews) are kept
    as ("preview", size)."""
    import aiohttp

    client_id = uuid.uuid4().hex
    seen = []
    async with aiohttp.ClientSession() as session:
        socket = session.ws_connect(f"{server.url}ws?clientId={client_id}",
                                    timeout=aiohttp.ClientWSTimeout(ws_receive=timeout))
        async with socket as ws:
            async with session.post(f"{server.url}prompt", json={"prompt": prompt, "client_id": client_id}) as r:
                queued = await r.json()
                assert r.status == 200, queued
            prompt_id = queued["prompt_id"]
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    seen.append(("preview", len(message.data)))
                    continue
                data = json.loads(message.data)
                kind, body = data["type"], data.get("data") or {}
                if body.get("prompt_id") not in (None, prompt_id):
                    continue
                seen.append((kind, body))
                if on_message is not None:
                    await on_message(kind, body, session)
                if kind in ("execution_success", "execution_error", "execution_interrupted"):
                    return prompt_id, seen
    raise AssertionError(f"the websocket closed before the prompt ended: {seen}")


def follow(server, prompt, on_message=None):
    return asyncio.run(_follow(server, prompt, on_message))


def ended(seen):
    return seen[-1][0]


def executed_nodes(seen):
    return {body["node"] for kind, body in seen if kind == "executing" and body.get("node") is not None}


def concept_metadata(server, name):
    with safe_open(os.path.join(server.base, "models", "infusion", f"{name}.safetensors"), framework="pt") as f:
        return {k: json.loads(v) if k == "training" else v for k, v in f.metadata().items()}


def test_a_queued_training_shows_progress_and_previews_and_saves_the_concept(server):
    prompt, train_id = training_prompt(server, "rex", steps=3, sample_every=2)
    prompt_id, seen = follow(server, prompt)
    assert ended(seen) == "execution_success", seen
    progress = [(b["value"], b["max"]) for kind, b in seen if kind == "progress" and b.get("node") == train_id]
    assert progress and progress[-1] == (3, 3), progress
    assert any(kind == "preview" for kind, _ in seen)  # the loss curve and the samples, live on the node
    outputs = server.history(prompt_id)["outputs"]
    assert outputs[train_id]["images"], outputs  # the loss graph, shown on the node
    training = concept_metadata(server, "rex")["training"]
    assert training["steps_done"] == 3 and training["status"] == "complete"


def test_interrupt_stops_training_and_keeps_the_last_step(server):
    prompt, train_id = training_prompt(server, "long", steps=5000, sample_every=0)

    async def interrupt_once_training(kind, body, session):
        if kind == "progress" and body.get("node") == train_id and body["value"] >= 1:
            async with session.post(f"{server.url}interrupt", json={}):
                pass

    _, seen = follow(server, prompt, interrupt_once_training)
    assert ended(seen) == "execution_interrupted", seen
    training = concept_metadata(server, "long")["training"]
    assert training["status"] == "interrupted" and 1 <= training["steps_done"] < 5000
    assert os.path.isfile(os.path.join(server.base, "models", "infusion", "long.resume"))


def test_requeued_training_is_cached_until_a_photo_or_a_caption_changes(server):
    prompt, train_id = training_prompt(server, "cached", steps=2, sample_every=0)
    _, first = follow(server, prompt)
    assert ended(first) == "execution_success" and train_id in executed_nodes(first), first
    photos_hash = concept_metadata(server, "cached")["training"]["photos_sha256"]

    _, again = follow(server, prompt)
    cached = [n for kind, body in again if kind == "execution_cached" for n in body["nodes"]]
    assert ended(again) == "execution_success" and train_id in cached and train_id not in executed_nodes(again)

    photo = os.path.join(server.photos, sorted(os.listdir(server.photos))[0])
    tiny_models.write_concept_photos(os.path.join(server.base, "other"), seed=99)
    os.replace(os.path.join(server.base, "other", os.path.basename(photo)), photo)  # the user swaps a photo
    _, changed = follow(server, prompt)
    assert ended(changed) == "execution_success" and train_id in executed_nodes(changed), changed
    new_hash = concept_metadata(server, "cached")["training"]["photos_sha256"]
    assert new_hash != photos_hash

    with open(os.path.splitext(photo)[0] + ".txt", "w") as f:  # ... and captions it
        f.write("a dog on a red sofa")
    _, captioned = follow(server, prompt)
    assert ended(captioned) == "execution_success" and train_id in executed_nodes(captioned), captioned
    assert concept_metadata(server, "cached")["training"]["photos_sha256"] not in (photos_hash, new_hash)
