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

# Flow-matching models (Flux, SD3) are sampled along sigmas of a rectified flow, which the SD
# samplers above do not know. Only samplers diffusers implements for that parametrisation are
# offered; the SD spellings of the others are refused with a message (FlowSamplerRefused).
FLOW_FAMILIES = frozenset({"flux", "sd3"})
FLOW_SAMPLERS = MappingProxyType({
    "Euler": ("FlowMatchEulerDiscreteScheduler", {}),
    # the pipelines then leave the sigmas to the scheduler (use_flow_sigmas) and pass only mu
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                 "use_flow_sigmas": True, "prediction_type": "flow_prediction"}),
})
FLOW_DEFAULT_SAMPLER = "Euler"
_FLOW_NAMES = MappingProxyType({"flux": "Flux", "sd3": "SD3"})
# why each SD-only sampler does not apply to a flow model (shown to the user)
_FLOW_REFUSALS = MappingProxyType({
    "Euler a": "its ancestral noise step is defined for noise-prediction models",
    "DPM++ 2M Karras": "Karras sigmas replace the model's shifted flow schedule",
    "DDIM": "it is defined for noise-prediction models",
})


class UnknownSampler(ValueError):
    pass


def _table(family: str | None):
    return FLOW_SAMPLERS if family in FLOW_FAMILIES else SAMPLERS


def sampler_names(family: str | None = None) -> list[str]:
    """The samplers offered for a model family (None: the SD families)."""
    return list(_table(family))


def default_sampler(family: str | None = None) -> str:
    return FLOW_DEFAULT_SAMPLER if family in FLOW_FAMILIES else DEFAULT_SAMPLER


def canonical_sampler(name: str, family: str | None = None) -> str:
    """The listed spelling of a sampler name for the family, matched case-insensitively."""
    table = _table(family)
    wanted = (name or "").strip().lower()
    for known in table:
        if known.lower() == wanted:
            return known
    if family in FLOW_FAMILIES:
        for known, why in _FLOW_REFUSALS.items():
            if known.lower() == wanted:
                raise UnknownSampler(f"sampler {known!r} does not apply to {_FLOW_NAMES[family]} models, which sample a "
                                     f"rectified flow ({why}); choose one of: {', '.join(table)}")
    raise UnknownSampler(f"unknown sampler {name!r}; choose one of: {', '.join(table)}")


def make_scheduler(name: str, base_config, family: str | None = None):
    """A fresh scheduler for `name` sharing the model's noise schedule (betas, prediction type; for
    flow models the shift and dynamic shifting of the model's own scheduler config)."""
    import diffusers

    class_name, overrides = _table(family)[canonical_sampler(name, family)]
    cls = getattr(diffusers, class_name)
    config = dict(base_config)
    # A Karras override must not leak into the other samplers built from the same base config.
    config["use_karras_sigmas"] = False
    if family in FLOW_FAMILIES and class_name != "FlowMatchEulerDiscreteScheduler":
        import inspect

        # the flow scheduler's `shift` is what DPMSolver calls `flow_shift`; the flow scheduler's
        # other settings mean nothing to it (and would be warned about on every image)
        config["flow_shift"] = float(config.get("shift", 1.0))
        accepted = inspect.signature(cls.__init__).parameters
        config = {k: v for k, v in config.items() if k in accepted or k.startswith("_")}
    config.update(overrides)
    return cls.from_config(config)
