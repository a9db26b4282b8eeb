"""Stand-in for the extra-network part of `modules.processing.process_images`.

For each batch the webui parses the batch's prompts, calls `extra_networks.activate(p, data)`,
samples, and after all batches calls `extra_networks.deactivate(p, data)` once.

Forge (a `shared.sd_model` with `forge_objects_original`) does more around activate, per batch:
`sd_models.forge_model_reload()` (loads another checkpoint if one was selected), then
`sd_model.forge_objects = forge_objects_original.shallow_copy()` before activate and
`sd_model.forge_objects = forge_objects_after_applying_lora.shallow_copy()` after it; the sampler
then loads those patchers (Forge merges its own LoRA patches at that load; see tiny_forge.py).
"""
from modules import extra_networks, sd_models, shared


class StableDiffusionProcessing:
    def __init__(self, prompt="", negative_prompt="", n_iter=1, batch_size=1):
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.n_iter = n_iter
        self.batch_size = batch_size
        self.all_prompts = [prompt] * (n_iter * batch_size)
        self.all_negative_prompts = [negative_prompt] * (n_iter * batch_size)
        self.extra_generation_params = {}
        self.extra_network_data = None
        self.disable_extra_networks = False
        self.iteration = 0
        self.prompts = []
        self.scripts = None
        self.comments = {}
        self.sd_model = None

    def comment(self, text):
        self.comments[text] = 1


def _is_forge(sd_model):
    return getattr(sd_model, "forge_objects_original", None) is not None


def process_images(p, sample=lambda p: None):
    """Runs the batches; `sample(p)` stands for the sampler (it sees the patched model). Returns
    the list of `sample` results."""
    results = []
    if not getattr(sd_models, "is_forge", False) and sd_models.checkpoints_list:
        sd_models.reload_model_weights()  # A1111: every generation (a no-op for the loaded checkpoint)
    for n in range(p.n_iter):
        p.iteration = n
        if getattr(sd_models, "is_forge", False):
            sd_models.forge_model_reload()
        p.sd_model = shared.sd_model
        forge = _is_forge(p.sd_model)
        if forge:
            p.sd_model.forge_objects = p.sd_model.forge_objects_original.shallow_copy()
        batch = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
        p.prompts, p.extra_network_data = extra_networks.parse_prompts(batch)
        if not p.disable_extra_networks:
            extra_networks.activate(p, p.extra_network_data)
        if forge:
            p.sd_model.forge_objects = p.sd_model.forge_objects_after_applying_lora.shallow_copy()
        results.append(sample(p))
    if not p.disable_extra_networks and p.extra_network_data:
        extra_networks.deactivate(p, p.extra_network_data)
    return results
