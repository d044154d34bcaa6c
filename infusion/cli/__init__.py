"""The headless runner (`python -m infusion`): ComfyUI as a library, no server.

locate.py     find ComfyUI (COMFYUI_PATH or custom_nodes/) and say exactly what is missing
runtime.py    configure and import ComfyUI, load its nodes and this pack
registry.py   node definitions from the live registry (the /object_info format)
convert.py    UI-format workflow -> API-format prompt (ComfyUI-free)
validate.py   a UI-format workflow checked against node definitions (ComfyUI-free)
overrides.py  command-line overrides on an API prompt (ComfyUI-free)
workflows.py  the pack's example workflows, reading workflow files
prompts.py    workflow file -> API prompt with overrides, on the live definitions
executor.py   run an API prompt with ComfyUI's own PromptExecutor; progress and cancel
train.py      the train command: one concept or a batch, with the node's own options
smoke.py      the smoke check: tiny models, every example workflow, end to end
main.py       the command line
"""
