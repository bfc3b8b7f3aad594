"""CaiT (Class-Attention in Image Transformers) built through timm, with the data, devices and
training loop used by the acceptance harness in `pipelines/` and by real training runs.

Submodules are imported on demand (`cait.models`, `cait.data`, ...) so that light stages such as
data preparation do not pay for importing torch.
"""
