"""The headless runner (`python -m infusion`): ComfyUI as a library, no server.

locate.py       find ComfyUI (COMFYUI_PATH or custom_nodes/) and say exactly what is missing
runtime.py      configure and import ComfyUI, load its nodes and this pack
node_inputs.py  a node's inputs from its live definition (the /object_info format)
executor.py     run an API prompt with ComfyUI's own PromptExecutor; progress and cancel
train.py        the train command: one concept or a batch, with the node's own options
cluster.py      the batch on a Ray cluster (--ray): a worker per GPU, retries, cancel
main.py         the command line (train, info)
"""
