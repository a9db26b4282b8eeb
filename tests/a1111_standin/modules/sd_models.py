"""Stand-in for `modules.sd_models`: checkpoint loading as the webui does it.

`load_model` builds a new model object and loads weights into it; `reload_model_weights` loads a
checkpoint of the same architecture *into the existing model in place* (same object, same
parameter tensors) and only builds a new one when the architecture differs. Both end with the
`model_loaded` callbacks. Tests supply model builders per architecture (`model_builders`) and
checkpoints (`CheckpointInfo` with a state-dict factory). No torch at import time.

`become_forge()` turns this module into Forge's: `load_model`, `reload_model_weights` and
`reuse_model_from_already_loaded` do nothing, and the model is (re)loaded by
`forge_model_reload()` from `model_data.forge_loading_parameters` (processing calls it before each
batch): a new engine object each time the parameters changed, then the `model_loaded` callbacks.
Forge's model builders take the state dict: `model_builders[arch](state_dict) -> engine`.
"""
from modules import script_callbacks, shared

model_builders = {}   # "sd1" | "sd2" | "sdxl" -> callable() returning a torch module with LDM names
checkpoints_list = {}  # title -> CheckpointInfo


class CheckpointInfo:
    def __init__(self, title, state_dict_fn, arch="sd1"):
        self.title = title
        self.name = title
        self.filename = f"/models/Stable-diffusion/{title}.safetensors"
        self.state_dict_fn = state_dict_fn
        self.arch = arch
        checkpoints_list[title] = self


class ModelData:
    def __init__(self):
        self.sd_model = None
        self.loaded_sd_models = []
        self.forge_loading_parameters = {}
        self.forge_hash = ""

    def get_sd_model(self):
        return self.sd_model

    def set_sd_model(self, v):
        self.sd_model = v
        shared.sd_model = v
        if v is not None and v not in self.loaded_sd_models:
            self.loaded_sd_models.insert(0, v)


model_data = ModelData()


def _flags(model, arch):
    model.is_sd1 = arch == "sd1"
    model.is_sd2 = arch == "sd2"
    model.is_sdxl = arch == "sdxl"
    model.is_sd3 = arch == "sd3"


def load_model(checkpoint_info=None, already_loaded_state_dict=None):
    info = checkpoint_info or next(iter(checkpoints_list.values()))
    model = model_builders[info.arch]()
    model.load_state_dict(already_loaded_state_dict or info.state_dict_fn())
    model.sd_checkpoint_info = info
    model.sd_model_checkpoint = info.filename
    shared.opts.data["sd_model_checkpoint"] = info.title  # as the webui: the loaded one is selected
    _flags(model, info.arch)
    model_data.set_sd_model(model)
    script_callbacks.model_loaded_callback(model)
    return model


def select_checkpoint():
    """The checkpoint the settings name (`shared.opts.sd_model_checkpoint`), else the first."""
    wanted = getattr(shared.opts, "sd_model_checkpoint", None)
    return checkpoints_list.get(wanted) or next(iter(checkpoints_list.values()), None)


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    """As the webui: called with no arguments at the start of every generation, and then a no-op
    when the selected checkpoint is the loaded one."""
    info = info or select_checkpoint()
    sd_model = sd_model or model_data.sd_model
    if sd_model is not None and sd_model.sd_model_checkpoint == info.filename and not forced_reload:
        return sd_model
    if sd_model is None or info.arch != sd_model.sd_checkpoint_info.arch:
        return load_model(info)
    sd_model.load_state_dict(info.state_dict_fn())  # copies into the live parameters
    sd_model.sd_checkpoint_info = info
    sd_model.sd_model_checkpoint = info.filename
    shared.opts.data["sd_model_checkpoint"] = info.title
    script_callbacks.model_loaded_callback(sd_model)
    return sd_model


def unload_model_weights(sd_model=None, info=None):
    sd_model = sd_model or model_data.sd_model
    if sd_model is not None and sd_model in model_data.loaded_sd_models:
        model_data.loaded_sd_models.remove(sd_model)
    if model_data.sd_model is sd_model:
        model_data.set_sd_model(None)
    return sd_model


def reset():
    model_builders.clear()
    checkpoints_list.clear()
    model_data.sd_model = None
    model_data.loaded_sd_models.clear()


# ---------------------------------------------------------------- Forge
is_forge = False


def _forge_load_model(checkpoint_info=None, already_loaded_state_dict=None):
    pass  # Forge: an empty stub


def _forge_reload_model_weights(sd_model=None, info=None, forced_reload=False):
    pass  # Forge: an empty stub


def _forge_reuse_model_from_already_loaded(sd_model, checkpoint_info, timer):
    pass


def _forge_load_model_weights(model, checkpoint_info, state_dict, timer):
    pass


def _forge_unload_model_weights(sd_model=None, info=None):
    return None  # Forge unloads from GPU memory; the engine object stays


def forge_model_reload():
    """Loads `forge_loading_parameters['checkpoint_info']` unless it is loaded already: drops the
    current engine, builds a new one, fires `model_loaded`. Returns (sd_model, reloaded)."""
    wanted = str(model_data.forge_loading_parameters)
    if model_data.forge_hash == wanted:
        return model_data.sd_model, False
    if model_data.sd_model is not None:
        model_data.sd_model = None  # as Forge: the old engine is dropped, nobody is told
    info = model_data.forge_loading_parameters.get("checkpoint_info")
    if info is None:
        raise ValueError("You do not have any model!")
    sd_model = model_builders[info.arch](info.state_dict_fn())
    sd_model.sd_checkpoint_info = info
    sd_model.extra_generation_params = {}
    model_data.set_sd_model(sd_model)
    script_callbacks.model_loaded_callback(sd_model)
    model_data.forge_hash = wanted
    return sd_model, True


def become_forge():
    global is_forge, load_model, reload_model_weights, unload_model_weights, reuse_model_from_already_loaded, \
        load_model_weights
    is_forge = True
    load_model = _forge_load_model
    reload_model_weights = _forge_reload_model_weights
    unload_model_weights = _forge_unload_model_weights
    reuse_model_from_already_loaded = _forge_reuse_model_from_already_loaded
    load_model_weights = _forge_load_model_weights
