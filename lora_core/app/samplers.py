"""Sampler names shown to users (A1111 spelling) mapped to diffusers schedulers, all built offline."""
from __future__ import annotations

from types import MappingProxyType

# name -> (diffusers scheduler class name, extra config overrides)
SAMPLERS = MappingProxyType({
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "DDIM": ("DDIMScheduler", {}),
})
DEFAULT_SAMPLER = "Euler a"


class UnknownSampler(ValueError):
    pass


def sampler_names() -> list[str]:
    return list(SAMPLERS)


def canonical_sampler(name: str) -> str:
    """The listed spelling of a sampler name, matched case-insensitively."""
    for known in SAMPLERS:
        if known.lower() == (name or "").strip().lower():
            return known
    raise UnknownSampler(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")


def make_scheduler(name: str, base_config):
    """A fresh scheduler for `name` sharing the model's noise schedule (betas, prediction type)."""
    import diffusers

    class_name, overrides = SAMPLERS[canonical_sampler(name)]
    cls = getattr(diffusers, class_name)
    config = dict(base_config)
    # A Karras override must not leak into the other samplers built from the same base config.
    config["use_karras_sigmas"] = False
    config.update(overrides)
    return cls.from_config(config)
