"""Stand-in for `modules.shared`: options (`opts`, `OptionInfo`, `options_section`), command line
options (`cmd_opts`), and the loaded model (`sd_model`)."""
import argparse


class OptionInfo:
    # Same constructor arguments, in the same order, as the webui's OptionInfo.
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None,
                 section=None, refresh=None, comment_before="", comment_after="", infotext=None,
                 restrict_api=False, category_id=None):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.category_id = category_id
        self.refresh = refresh
        self.do_not_save = False
        self.comment_before = comment_before
        self.comment_after = comment_after
        self.infotext = infotext
        self.restrict_api = restrict_api

    def link(self, label, url):
        self.comment_before += f"[<a href='{url}' target='_blank'>{label}</a>]"
        return self

    def js(self, label, js_func):
        self.comment_before += f"[<a onclick='{js_func}(); return false'>{label}</a>]"
        return self

    def info(self, info):
        self.comment_after += f"<span class='info'>({info})</span>"
        return self

    def html(self, html):
        self.comment_after += html
        return self

    def needs_restart(self):
        self.comment_after += " <span class='info'>(requires restart)</span>"
        return self

    def needs_reload_ui(self):
        self.comment_after += " <span class='info'>(requires Reload UI)</span>"
        return self


def options_section(section_identifier, options_dict):
    for value in options_dict.values():
        if len(section_identifier) == 2:
            value.section = section_identifier
        elif len(section_identifier) == 3:
            value.section = section_identifier[0:2]
            value.category_id = section_identifier[2]
    return options_dict


class Options:
    """Attribute access to settings; unknown names fall back to the registered defaults."""

    def __init__(self, templates):
        # The webui keeps the templates dict itself: options added to `options_templates` after
        # start-up (as extensions do at import time) are settings too.
        super().__setattr__("data_labels", templates)
        super().__setattr__("data", {k: v.default for k, v in templates.items()})
        super().__setattr__("_onchange", {})

    def __getattr__(self, item):
        data = self.__dict__["data"]
        if item in data:
            return data[item]
        labels = self.__dict__["data_labels"]
        if item in labels:
            return labels[item].default
        raise AttributeError(item)

    def __setattr__(self, key, value):
        if key in self.data or key in self.data_labels:
            self.set(key, value)
        else:
            super().__setattr__(key, value)

    def set(self, key, value, is_api=False, run_callbacks=True):
        old = self.data.get(key)
        if old == value:
            return False
        self.data[key] = value
        if run_callbacks:
            info = self.data_labels.get(key)
            if info is not None and info.onchange is not None:
                info.onchange()
            for func in self._onchange.get(key, []):
                func()
        return True

    def add_option(self, key, info):
        self.data_labels[key] = info
        if key not in self.data and not info.do_not_save:
            self.data[key] = info.default

    def onchange(self, key, func, call=True):
        self._onchange.setdefault(key, []).append(func)
        if call:
            func()

    def get_default(self, key):
        info = self.data_labels.get(key)
        return None if info is None else info.default


def _base_templates():
    """A few of the webui's own settings that extensions read."""
    templates = {}
    templates.update(options_section(("saving-images", "Saving images/grids"), {
        "samples_format": OptionInfo("png", "File format for images"),
    }))
    templates.update(options_section((None, "Hidden options"), {
        "disabled_extensions": OptionInfo([], "Disable these extensions"),
        "disable_all_extensions": OptionInfo("none", "Disable all extensions"),
    }))
    templates.update(options_section(("extra_networks", "Extra Networks"), {
        "extra_networks_default_multiplier": OptionInfo(1.0, "Default multiplier for extra networks"),
        "extra_networks_add_text_separator": OptionInfo(" ", "Extra networks separator"),
    }))
    return templates


options_templates = _base_templates()
opts = Options(options_templates)

parser = argparse.ArgumentParser()
parser.add_argument("--data-dir", type=str, default=".")
parser.add_argument("--api", action="store_true")
parser.add_argument("--nowebui", action="store_true")
parser.add_argument("--disable-all-extensions", action="store_true")
parser.add_argument("--disable-extra-extensions", action="store_true")
cmd_opts = parser.parse_args([])

sd_model = None
demo = None


def reset():
    """Fresh settings and no model (tests call this between webui 'launches')."""
    global opts, options_templates, sd_model, demo
    options_templates = _base_templates()
    opts = Options(options_templates)
    sd_model = None
    demo = None
