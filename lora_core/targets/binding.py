"""Bind canonical ModuleKeys to the live tensors of one loaded model.

A ``Binding`` is built once per model (diffusers modules or A1111/LDM named tensors). At build
time every module is registered under the flat form of each of its names (diffusers and LDM for
the UNet, HF CLIP and OpenCLIP for the text encoders), so ``resolve`` is one dict lookup: flat
names cannot be un-flattened reliably (``to_out_0`` vs ``to.out.0``), but flattening every known
name can.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from . import naming
from .layout import family_from_unet_shapes, layout_from_diffusers, layout_from_ldm

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slot:
    """Where a ΔW goes: ``tensor[rows]`` (or the whole tensor) of shape ``shape``.

    ``tensor`` is the model's own tensor object (a Parameter for live models): writing into it in
    place (under ``torch.no_grad()``) patches the model.
    """

    tensor: Any = field(repr=False)
    rows: slice | None  # q/k/v third of an OpenCLIP fused in_proj, else None
    shape: tuple[int, ...]  # shape of ΔW (of tensor[rows] when rows is set)
    block: str | None  # lbw block id: BASE, IN00..IN11, M00, OUT00..OUT11; None = outside every block
    component: str  # "unet", "te1", "te2"
    name: str  # the tensor's name in the model it came from (for messages)
    part: str  # "weight" or "bias"


@dataclass
class _Module:
    component: str
    block: str | None
    tensors: dict[str, Any]  # part -> tensor
    names: dict[str, str]  # part -> tensor name in the source model
    rows: slice | None = None


# OpenCLIP tensors with no HF-shaped twin: text_projection is the transpose of HF's Linear weight,
# so binding it under that name would hand the patcher a transposed target.
_OPENCLIP_UNPAIRED = frozenset({"text_projection", "logit_scale"})


def _shape_of(tensor: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in tensor.shape)


def _split_key(key: str) -> tuple[str, str]:
    component, sep, rest = key.partition(":")
    if not sep:
        raise ValueError(f"module key {key!r} has no component prefix (unet:, te1:, te2:)")
    return component, rest


class Binding:
    """Canonical module keys -> live tensors of one model. Build with ``from_diffusers`` or
    ``from_ldm``."""

    def __init__(self, family: str, layout: naming.UNetLayout | None = None) -> None:
        self.family = family
        self.layout = layout
        self._index: dict[str, _Module] = {}  # "component:flat" -> module
        self._primary: list[str] = []  # one key per module, in registration order

    # -- building -------------------------------------------------------------------------------

    def _register(self, module: _Module, paths: Iterable[str], primary: bool = True) -> None:
        """Index `module` under the flat form of each path; the first becomes its key in
        ``keys()`` unless `primary` is False (an alias of a module listed under another name)."""
        first = primary
        for path in paths:
            key = f"{module.component}:{naming.flat(path)}"
            known = self._index.get(key)
            if known is None:
                self._index[key] = module
                if first:
                    self._primary.append(key)
                    first = False
            elif known is not module:
                logger.warning("module key %s names two modules (%s, %s); keeping the first", key,
                               next(iter(known.names.values())), next(iter(module.names.values())))

    def _add_unet(self, tensors: Mapping[str, Any], source_names: Mapping[str, str], namespace: str) -> None:
        """`tensors`: names without the component prefix, in `namespace` ("diffusers" or "ldm")."""
        modules = _group(tensors, source_names, "unet")
        layout = self.layout
        if layout is None:
            shapes = {n: t.shape for n, t in tensors.items()}
            try:
                layout = layout_from_diffusers(shapes) if namespace == "diffusers" else layout_from_ldm(shapes)
            except (ValueError, KeyError) as exc:
                logger.warning("could not read the UNet block layout (%s); only its own names will resolve", exc)
                layout = None
            self.layout = layout
        pairs = naming.unet_modules(layout) if layout is not None else ()
        if namespace == "diffusers":
            other = {m.diffusers: m for m in pairs}
        else:
            other = {m.ldm: m for m in pairs}
        for path, module in modules.items():
            pair = other.get(path)
            if pair is not None:
                module.block = pair.block
                paths = (pair.diffusers, pair.ldm)
            else:
                module.block = naming.lbw_block_of_ldm(path) if namespace == "ldm" else None
                paths = (path,)
            self._register(module, paths)

    def _add_text_encoder(self, tensors: Mapping[str, Any], source_names: Mapping[str, str], component: str,
                          namespace: str) -> None:
        """`tensors`: names without the component prefix, in namespace "hf" or "openclip"."""
        if namespace == "hf":
            source_names = {naming.hf_clip_path(n): source_names.get(n, n) for n in tensors}
            tensors = {naming.hf_clip_path(n): t for n, t in tensors.items()}
        modules = _group(tensors, source_names, component)
        for module in modules.values():
            module.block = naming.TEXT_ENCODER_BLOCK
        layers = {int(p.split(".")[3 if namespace == "hf" else 2]) for p in modules
                  if p.startswith(naming.HF_LAYER_PREFIX if namespace == "hf" else naming.OPENCLIP_LAYER_PREFIX)}
        pairs = naming.clip_modules(max(layers) + 1 if layers else 0)
        if namespace == "hf":
            by_own = {m.hf: m for m in pairs}
        else:
            by_own: dict[str, Any] = {}
            for m in pairs:
                by_own.setdefault(m.openclip, []).append(m)
        for path, module in modules.items():
            pair = by_own.get(path)
            if pair is None:
                if namespace == "openclip" and path in _OPENCLIP_UNPAIRED:
                    continue
                self._register(module, (path,))
            elif namespace == "hf":
                # the OpenCLIP name of a fused q/k/v part names the whole in_proj, not this module
                self._register(module, (path,) if pair.fused is not None else (path, pair.openclip))
            else:
                for m in pair:
                    if m.fused is None:
                        self._register(module, (m.hf, path))
                    else:
                        self._register(_fused_part(module, m.fused), (m.hf,))
                # the whole fused in_proj stays reachable under its OpenCLIP name
                self._register(module, (path,), primary=False)

    # -- constructors ---------------------------------------------------------------------------

    @classmethod
    def from_diffusers(cls, unet: Any, text_encoders: Iterable[Any] | None = None,
                       family: str | None = None) -> "Binding":
        """Bind a diffusers ``UNet2DConditionModel`` and HF CLIP text encoders ([te1] or [te1, te2]).

        Either may be None (a UNet-only or text-encoder-only binding)."""
        unet_tensors, unet_names = _live_parameters(unet)
        te_tensors = [(f"te{i + 1}", *_live_parameters(te)) for i, te in enumerate(text_encoders or ())
                      if te is not None]
        shapes = {n: t.shape for n, t in unet_tensors.items()}
        detected = family_from_unet_shapes(shapes, "diffusers", {c: "hf" for c, _, _ in te_tensors})
        binding = cls(family or detected)
        if unet_tensors:
            binding._add_unet(unet_tensors, unet_names, "diffusers")
        for component, tensors, names in te_tensors:
            binding._add_text_encoder(tensors, names, component, "hf")
        logger.debug("bound %d modules of a diffusers %s model", len(binding._primary), binding.family)
        return binding

    @classmethod
    def from_ldm(cls, named_tensors: Mapping[str, Any] | Iterable[tuple[str, Any]], family: str | None = None) -> "Binding":
        """Bind tensors named like an LDM checkpoint or A1111's ``sd_model.named_parameters()``:
        ``model.diffusion_model.*``, ``cond_stage_model.*``, ``conditioner.embedders.N.*``.
        Other tensors (VAE, EMA) are ignored; A1111's ``wrapped.`` hijack level is skipped.
        `named_tensors` may also be an iterable of (name, tensor) pairs."""
        unet: list[tuple[str, Any]] = []
        text: list[tuple[str, str, str, Any, str]] = []
        items = named_tensors.items() if hasattr(named_tensors, "items") else named_tensors
        for name, tensor in items:
            if name.startswith(naming.LDM_UNET_PREFIX):
                unet.append((name[len(naming.LDM_UNET_PREFIX):], tensor))
                continue
            if not name.startswith(("cond_stage_model.", "conditioner.")):
                continue
            plain = name.replace(".wrapped.", ".")
            for prefix, component, namespace in naming.LDM_TEXT_PREFIXES:
                if plain.startswith(prefix):
                    text.append((component, namespace, plain[len(prefix):], tensor, name))
                    break
        return cls.from_parts(unet, text, family=family, unet_prefix=naming.LDM_UNET_PREFIX)

    @classmethod
    def from_parts(cls, unet: Iterable[tuple[str, Any]], text: Iterable[tuple], family: str | None = None,
                   unet_prefix: str = "") -> "Binding":
        """Bind a UNet in the LDM namespace and text encoders, given already split by component:
        `unet` = (name without prefix, tensor); `text` = (component, namespace "hf"|"openclip",
        name within the encoder, tensor[, name as the model calls it]). Used by ``from_ldm`` and
        by hosts whose models are not one module (Forge keeps the UNet and CLIP apart)."""
        unet = dict(unet)
        tes: dict[str, tuple[str, dict[str, Any]]] = {}
        source_names: dict[str, str] = {}  # "component:name" -> name as the model calls it
        for component, namespace, name, tensor, *given in text:
            tes.setdefault(component, (namespace, {}))[1][name] = tensor
            source_names[f"{component}:{name}"] = given[0] if given else f"{component}.{name}"
        shapes = {n: t.shape for n, t in unet.items()}
        detected = family_from_unet_shapes(shapes, "ldm", {c: ns for c, (ns, _) in tes.items()})
        binding = cls(family or detected)
        if unet:
            binding._add_unet(unet, {n: unet_prefix + n for n in unet}, "ldm")
        for component in sorted(tes):
            namespace, tensors = tes[component]
            names = {n: source_names[f"{component}:{n}"] for n in tensors}
            binding._add_text_encoder(tensors, names, component, namespace)
        logger.debug("bound %d modules of an LDM %s model", len(binding._primary), binding.family)
        return binding

    # -- queries --------------------------------------------------------------------------------

    def resolve(self, key: str, part: str = "weight") -> Slot | None:
        """The slot of ``part`` ("weight" or "bias") of the module a canonical key names, or None
        if this model has no such module (or the module has no such tensor)."""
        module = self._index.get(key)
        if module is None:
            return None
        tensor = module.tensors.get(part)
        if tensor is None:
            return None
        shape = _shape_of(tensor)
        if module.rows is not None:
            shape = (module.rows.stop - module.rows.start,) + shape[1:]
        return Slot(tensor, module.rows, shape, module.block, module.component, module.names[part], part)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def match(self, keys: Any) -> tuple[int, int]:
        """(matched, unmatched) counts of module keys (an iterable of keys, or anything with an
        ``adapters`` mapping such as a LoraFile)."""
        keys = getattr(keys, "adapters", keys)
        matched = unmatched = 0
        for key in keys:
            if key in self._index:
                matched += 1
            else:
                unmatched += 1
        return matched, unmatched

    def unmatched(self, keys: Any) -> list[str]:
        """The keys of `keys` (or of a LoraFile's adapters) this model has no module for."""
        return [k for k in getattr(keys, "adapters", keys) if k not in self._index]

    def keys(self, component: str | None = None) -> list[str]:
        """One canonical key per bound module (diffusers / HF name where known)."""
        if component is None:
            return list(self._primary)
        return [k for k in self._primary if _split_key(k)[0] == component]

    @property
    def components(self) -> tuple[str, ...]:
        present = {_split_key(k)[0] for k in self._primary}
        return tuple(c for c in naming.COMPONENTS if c in present)

    def __len__(self) -> int:
        return len(self._primary)

    def __repr__(self) -> str:
        return f"Binding(family={self.family!r}, modules={len(self._primary)}, components={self.components})"


# Parameters PEFT adds next to a wrapped layer: not model weights, never patch targets.
_PEFT_PARTS = (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.", ".lora_magnitude_vector.")


def _live_parameters(module: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, source names) of a live torch module, keyed by its plain module paths: a
    ``torch.compile`` wrapper (``_orig_mod.``) and PEFT's ``base_layer.`` level are looked
    through, PEFT's own adapter parameters skipped."""
    tensors: dict[str, Any] = {}
    names: dict[str, str] = {}
    if module is None:
        return tensors, names
    for name, tensor in module.named_parameters():
        if any(p in name for p in _PEFT_PARTS):
            continue
        plain = name.replace("_orig_mod.", "").replace(".base_layer.", ".")
        tensors[plain] = tensor
        names[plain] = name
    return tensors, names


def _group(tensors: Mapping[str, Any], source_names: Mapping[str, str], component: str) -> dict[str, _Module]:
    """Group parameter tensors into modules by path: {path: _Module} with weight/bias parts.
    `source_names` gives a tensor's name in the model it came from (default: its own name)."""
    modules: dict[str, _Module] = {}
    for name, tensor in tensors.items():
        module_path, part = naming.split_tensor_name(name)
        if part not in ("weight", "bias"):
            continue  # buffers a checkpoint may carry (position_ids, ...): nothing to patch
        module = modules.get(module_path)
        if module is None:
            module = modules[module_path] = _Module(component, None, {}, {})
        module.tensors[part] = tensor
        module.names[part] = source_names.get(name, name)
    return modules


def _fused_part(module: _Module, index: int) -> _Module:
    start, stop = naming.fused_rows(index, int(module.tensors["weight"].shape[0]))
    return _Module(module.component, module.block, module.tensors, module.names, slice(start, stop))
