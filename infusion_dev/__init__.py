"""ComfyUI-Infusion's development package: what the tests, the benchmarks and the first run use, never
installed (.comfyignore leaves it out of the Comfy Registry archive) and never imported by the pack.

comfy_harness.py   ComfyUI for tests and scripts (the runner's bootstrap), the pack loaded once, tiny models
comfy_versions.py  the development tools' ComfyUI version branches (Train LoRA, a node outside a graph)
tiny_models.py     random-weight UNets, CLIPs and checkpoints in ComfyUI's real layouts
tiny_dits.py       the same for the DiT families
family_models.py   a model of every family ComfyUI runs (the family table's test), on the meta device
examples.py        the example workflows as API prompts (comfy-cli's conversion, live definitions)
validate.py        an example workflow checked against the live node definitions
overrides.py       settings changed on an API prompt
smoke.py           every example workflow end to end on tiny models (the tests and the archive test)
toyworld/          a world small enough that a diffusion model trained here truly knows it
first_run.py       the README's first run: a concept learned in the toy world, with a picture
"""
