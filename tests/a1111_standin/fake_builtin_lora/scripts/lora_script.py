"""Fake of the built-in Lora extension, registering what the real one registers and when:
the `lora` network and `lyco` alias plus a "Lora" page in before_ui, an infotext handler, and the
two sdapi routes on app start. It records every call so tests can see it was bypassed."""
from modules import extra_networks, script_callbacks, ui_extra_networks

calls = []


class FakeBuiltinLora(extra_networks.ExtraNetwork):
    def __init__(self):
        super().__init__("lora")

    def activate(self, p, params_list):
        calls.append(("activate", [x.items for x in params_list]))

    def deactivate(self, p):
        calls.append(("deactivate",))


class FakeBuiltinPage(ui_extra_networks.ExtraNetworksPage):
    def __init__(self):
        super().__init__("Lora")

    def list_items(self):
        return iter(())


def before_ui():
    ui_extra_networks.register_page(FakeBuiltinPage())
    network = FakeBuiltinLora()
    extra_networks.register_extra_network(network)
    extra_networks.register_extra_network_alias(network, "lyco")


def infotext_pasted(infotext, params):
    calls.append(("infotext_pasted", params.get("Prompt")))


def api(_demo, app):
    @app.get("/sdapi/v1/loras")
    def get_loras():
        return [{"name": "builtin"}]

    @app.post("/sdapi/v1/refresh-loras")
    def refresh():
        return "builtin"


script_callbacks.on_before_ui(before_ui)
script_callbacks.on_infotext_pasted(infotext_pasted)
script_callbacks.on_app_started(api)
