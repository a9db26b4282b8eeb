"""What the fake built-in LoRA extensions (A1111's `extensions-builtin/Lora`, Forge's
`extensions-builtin/sd_forge_lora`) register, and when: the `lora` network and `lyco` alias plus
a "Lora" cards page in before_ui, infotext handlers, the two sdapi routes on app start. Every call
is recorded so tests can see whether the built-in was bypassed.

The registering calls themselves (`script_callbacks.on_...`) are made in each built-in's
`scripts/lora_script.py`, because the webui names a callback after the file that registered it.
No torch here.
"""
from modules import extra_networks, ui_extra_networks


class FakeBuiltinLora(extra_networks.ExtraNetwork):
    def __init__(self, calls):
        super().__init__("lora")
        self.calls = calls

    def activate(self, p, params_list):
        self.calls.append(("activate", [x.items for x in params_list]))

    def deactivate(self, p):
        self.calls.append(("deactivate",))


class FakeBuiltinPage(ui_extra_networks.ExtraNetworksPage):
    def __init__(self):
        super().__init__("Lora")

    def list_items(self):
        return iter(())


class BuiltinLora:
    def __init__(self, calls):
        self.calls = calls

    def before_ui(self):
        self.calls.append(("before_ui",))
        ui_extra_networks.register_page(FakeBuiltinPage())
        network = FakeBuiltinLora(self.calls)
        extra_networks.register_extra_network(network)
        extra_networks.register_extra_network_alias(network, "lyco")

    def infotext_pasted(self, infotext, params):
        self.calls.append(("infotext_pasted", params.get("Prompt")))

    def infotext_pasted_addnet(self, infotext, params):
        # The real one turns old AddNet fields into tags; here it only records that it ran.
        self.calls.append(("infotext_pasted_addnet", params.get("Prompt")))

    def api(self, _demo, app):
        @app.get("/sdapi/v1/loras")
        def get_loras():
            return [{"name": "builtin"}]

        @app.post("/sdapi/v1/refresh-loras")
        def refresh():
            return "builtin"

    def unload(self):
        self.calls.append(("unload",))


def add_builtin_options(parser):
    """The built-ins' preload (identical in A1111 and Forge): the two options, defined
    unconditionally; the webui runs it after the user extensions' preloads, even when disabled."""
    import os

    from modules import paths
    from modules.paths_internal import normalized_filepath

    parser.add_argument("--lora-dir", type=normalized_filepath, default=os.path.join(paths.models_path, "Lora"),
                        help="Path to directory with Lora networks.")
    parser.add_argument("--lyco-dir-backcompat", type=normalized_filepath,
                        default=os.path.join(paths.models_path, "LyCORIS"),
                        help="Path to directory with LyCORIS networks (also --lyco-dir).")
