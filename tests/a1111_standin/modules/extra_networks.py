"""Stand-in for `modules.extra_networks`: the `<name:arg:arg>` prompt tag registry.

Call order as in the webui: for every batch `activate(p, data)` calls each mentioned network with
its params, then every other registered network with `[]`; after the batches, `deactivate(p, data)`
calls every registered network once. An alias is used only when no network has that name.
"""
import logging
import re
from collections import defaultdict

from modules import errors

extra_network_registry = {}
extra_network_aliases = {}

log = logging.getLogger(__name__)


def initialize():
    extra_network_registry.clear()
    extra_network_aliases.clear()


def register_extra_network(extra_network):
    extra_network_registry[extra_network.name] = extra_network


def register_extra_network_alias(extra_network, alias):
    extra_network_aliases[alias] = extra_network


class ExtraNetworkParams:
    """One tag's arguments: `items` as split on ':'; `name=value` items also land in `named`."""

    def __init__(self, items=None):
        self.items = items or []
        self.positional = []
        self.named = {}
        for item in self.items:
            parts = item.split("=", 2) if isinstance(item, str) else [item]
            if len(parts) == 2:
                self.named[parts[0]] = parts[1]
            else:
                self.positional.append(item)

    def __eq__(self, other):
        return self.items == other.items


class ExtraNetwork:
    def __init__(self, name):
        self.name = name

    def activate(self, p, params_list):
        raise NotImplementedError

    def deactivate(self, p):
        raise NotImplementedError


def lookup_extra_networks(extra_network_data):
    found = {}
    for name, args in list(extra_network_data.items()):
        network = extra_network_registry.get(name)
        alias = extra_network_aliases.get(name)
        if network is None and alias is not None:
            network = alias
        if network is None:
            log.info("Skipping unknown extra network: %s", name)
            continue
        found.setdefault(network, []).extend(args)
    return found


def activate(p, extra_network_data):
    done = []
    for network, args in lookup_extra_networks(extra_network_data).items():
        try:
            network.activate(p, args)
            done.append(network)
        except Exception as e:
            errors.display(e, f"activating extra network {network.name} with arguments {args}")
    for name, network in extra_network_registry.items():
        if network in done:
            continue
        try:
            network.activate(p, [])
        except Exception as e:
            errors.display(e, f"activating extra network {name}")
    if getattr(p, "scripts", None) is not None:
        p.scripts.after_extra_networks_activate(p, extra_network_data=extra_network_data)


def deactivate(p, extra_network_data):
    data = lookup_extra_networks(extra_network_data)
    for network in data:
        try:
            network.deactivate(p)
        except Exception as e:
            errors.display(e, f"deactivating extra network {network.name}")
    for name, network in extra_network_registry.items():
        if network in data:
            continue
        try:
            network.deactivate(p)
        except Exception as e:
            errors.display(e, f"deactivating unmentioned extra network {name}")


re_extra_net = re.compile(r"<(\w+):([^>]+)>")


def parse_prompt(prompt):
    found = defaultdict(list)

    def take(m):
        found[m.group(1)].append(ExtraNetworkParams(items=m.group(2).split(":")))
        return ""

    return re.sub(re_extra_net, take, prompt), found


def parse_prompts(prompts):
    cleaned = []
    data = None
    for prompt in prompts:
        text, parsed = parse_prompt(prompt)
        if data is None:
            data = parsed  # the webui takes the networks of the first prompt of a batch
        cleaned.append(text)
    return cleaned, data
