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

from . import naming, naming_dit, naming_t5
from .layout import family_from_unet_shapes, layout_from_diffusers, layout_from_ldm
from .layout_dit import dit_family, spec_of
from .naming_dit import DiTFused, DiTSwapped

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slot:
    """Where a ΔW goes: ``tensor[rows]`` (or the whole tensor) of shape ``shape``.

    ``tensor`` is the model's own tensor object (a Parameter for live models): writing into it in
    place (under ``torch.no_grad()``) patches the model.
    """

    tensor: Any = field(repr=False)
    rows: slice | None  # part of a fused tensor (OpenCLIP in_proj q/k/v, Flux/SD3 qkv, linear1), else None
    shape: tuple[int, ...]  # shape of ΔW (of tensor[rows] when rows is set)
    block: str | None  # lbw block id: BASE, IN00..OUT11 (UNets); CLIP, T5, IN, Dnn, Snn, Jnn, OUT (DiTs)
    component: str  # "unet", "te1", "te2", "te3"
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
        # keys whose ΔW rows go to several slots (a fused tensor on a model with the parts apart,
        # a swapped-halves tensor): key -> [(module, its rows or None, rows of ΔW)]
        self._parts: dict[str, list[tuple[_Module, slice | None, slice]]] = {}
        # keys of whole tensors that other keys reach by rows: they resolve by the same rows
        # (resolve_parts) so that every write to such a tensor covers the same row ranges; a
        # whole-tensor slot next to row slots of the same tensor would overwrite their rows
        self._split_only: set[str] = set()

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

    def _add_dit(self, tensors: Mapping[str, Any], source_names: Mapping[str, str], family: str,
                 namespace: str) -> None:
        """A Flux/SD3 transformer in `namespace` ("diffusers" or "ldm"): every module under both
        names; fused tensors and swapped halves reachable from the other namespace by rows."""
        spec = spec_of(family)
        if namespace == "ldm":
            # BFL's RMSNorm holds its weight as `.scale`; the diffusers twin calls it `.weight`
            renamed = {(n[:-len(".scale")] + ".weight" if n.endswith(".scale") else n): n for n in tensors}
            tensors = {r: tensors[n] for r, n in renamed.items()}
            source_names = {r: source_names.get(n, n) for r, n in renamed.items()}
        modules = _group(tensors, source_names, "unet")
        counts = naming_dit.block_counts(spec, modules, namespace)
        pairs, fused, swapped = naming_dit.modules(spec, counts)
        own = (lambda m: m.diffusers) if namespace == "diffusers" else (lambda m: m.ldm)
        by_pair = {own(m): m for m in pairs}
        by_swapped = {own(m): m for m in swapped}
        if namespace == "ldm":
            by_fused = {m.ldm: m for m in fused}
            part_of: dict[str, tuple[DiTFused, int]] = {}
        else:
            by_fused = {}
            part_of = {p: (m, i) for m in fused for i, p in enumerate(m.parts)}
        groups: dict[str, dict[int, _Module]] = {}
        for path, module in modules.items():
            pair = by_pair.get(path)
            if pair is not None:
                module.block = pair.block
                self._register(module, (pair.diffusers, pair.ldm))
                continue
            block_of = naming_dit.block_of_diffusers if namespace == "diffusers" else naming_dit.block_of_ldm
            module.block = block_of(spec, path)
            if module.block is None:
                module.block = next((b for d, l, b in spec.top + spec.top_swapped if path in (d, l)), None)
            self._register(module, (path,))
            if path in by_swapped:
                self._add_swapped(module, by_swapped[path], namespace)
            elif path in by_fused:
                self._add_fused_parts(module, by_fused[path])
            elif path in part_of:
                m, i = part_of[path]
                groups.setdefault(m.ldm, {})[i] = module
        for m in fused:
            group = groups.get(m.ldm)
            if group is None:
                continue
            if len(group) != len(m.parts):  # e.g. a PEFT-wrapped model missing a part: no fused key
                logger.warning("%s: only %d of its %d parts are in the model; its fused key will not resolve",
                               m.ldm, len(group), len(m.parts))
                continue
            entries, start = [], 0
            for i in range(len(m.parts)):
                rows = int(group[i].tensors["weight"].shape[0]) if "weight" in group[i].tensors else 0
                entries.append((group[i], None, slice(start, start + rows)))
                start += rows
            self._parts[f"unet:{naming.flat(m.ldm)}"] = entries

    def _add_fused_parts(self, module: _Module, fused: "DiTFused") -> None:
        """A live fused tensor (BFL layout): each diffusers part name resolves to its rows."""
        weight = module.tensors.get("weight")
        if weight is None:
            return
        try:
            sizes = naming_dit.fused_sizes(fused.rule, len(fused.parts), _shape_of(weight))
        except ValueError as exc:
            logger.warning("%s: %s; its parts will not resolve", fused.ldm, exc)
            return
        own = f"{module.component}:{naming.flat(fused.ldm)}"
        self._parts[own] = []
        self._split_only.add(own)
        for part, (start, stop) in zip(fused.parts, naming_dit.offsets(sizes)):
            alias = _Module(module.component, module.block, module.tensors, module.names, slice(start, stop))
            self._register(alias, (part,), primary=False)
            self._parts[own].append((module, slice(start, stop), slice(start, stop)))

    def _add_swapped(self, module: _Module, swapped: "DiTSwapped", namespace: str) -> None:
        """The final AdaLayerNorm: the other namespace's name resolves to the same tensor with
        its row halves exchanged (never to the plain tensor: that would be silently wrong)."""
        weight = module.tensors.get("weight")
        if weight is None:
            return
        total = int(weight.shape[0])
        if total % 2:
            logger.warning("%s: %d rows cannot be two swapped halves; the other name will not resolve",
                           swapped.ldm, total)
            return
        half = total // 2
        own, other = (swapped.diffusers, swapped.ldm) if namespace == "diffusers" else (swapped.ldm, swapped.diffusers)
        self._parts[f"unet:{naming.flat(other)}"] = [
            (module, slice(half, total), slice(0, half)),
            (module, slice(0, half), slice(half, total)),
        ]
        own_key = f"unet:{naming.flat(own)}"
        self._parts[own_key] = [(module, slice(0, half), slice(0, half)), (module, slice(half, total), slice(half, total))]
        self._split_only.add(own_key)

    def _add_text_encoder(self, tensors: Mapping[str, Any], source_names: Mapping[str, str], component: str,
                          namespace: str) -> None:
        """`tensors`: names without the component prefix, in namespace "hf", "openclip" or "t5"."""
        if namespace == naming_t5.T5_NAMESPACE:  # one namespace: every module under its own name
            for path, module in _group(tensors, source_names, component).items():
                module.block = "T5"
                self._register(module, (path,))
            return
        if namespace == "hf":
            source_names = {naming.hf_clip_path(n): source_names.get(n, n) for n in tensors}
            tensors = {naming.hf_clip_path(n): t for n, t in tensors.items()}
        modules = _group(tensors, source_names, component)
        # lbw: the DiT vectors name the CLIP encoders CLIP, the UNet ones BASE
        te_block = "CLIP" if self.family in naming.DIT_FAMILIES else naming.TEXT_ENCODER_BLOCK
        for module in modules.values():
            module.block = te_block
        layers = {int(p.split(".")[3 if namespace == "hf" else 2]) for p in modules
                  if p.startswith(naming.HF_LAYER_PREFIX if namespace == "hf" else naming.OPENCLIP_LAYER_PREFIX)}
        pairs = naming.clip_modules(max(layers) + 1 if layers else 0)
        if namespace == "hf":
            by_own = {m.hf: m for m in pairs}
        else:
            by_own: dict[str, Any] = {}
            for m in pairs:
                by_own.setdefault(m.openclip, []).append(m)
        qkv_groups: dict[str, dict[int, _Module]] = {}  # hf namespace: in_proj name -> q/k/v modules
        for path, module in modules.items():
            pair = by_own.get(path)
            if pair is None:
                if namespace == "openclip" and path in _OPENCLIP_UNPAIRED:
                    continue
                self._register(module, (path,))
            elif namespace == "hf":
                # the OpenCLIP name of a fused q/k/v part names the whole in_proj, not this module
                self._register(module, (path,) if pair.fused is not None else (path, pair.openclip))
                if pair.fused is not None:
                    qkv_groups.setdefault(pair.openclip, {})[pair.fused] = module
            else:
                for m in pair:
                    if m.fused is None:
                        self._register(module, (m.hf, path))
                    else:
                        self._register(_fused_part(module, m.fused), (m.hf,))
                if any(m.fused is not None for m in pair):
                    self._add_in_proj_rows(module, path)
        for path, group in qkv_groups.items():
            self._add_in_proj_split(component, path, group)

    def _add_in_proj_rows(self, module: _Module, path: str) -> None:
        """A live OpenCLIP in_proj: its own (whole-tensor) key resolves by the q/k/v rows its part
        keys use, so a stack of an in_proj-keyed LoRA and a q/k/v-keyed one adds up."""
        own = f"{module.component}:{naming.flat(path)}"
        self._register(module, (path,), primary=False)
        rows = [slice(*naming.fused_rows(i, int(module.tensors["weight"].shape[0]))) for i in range(3)]
        self._parts[own] = [(module, r, r) for r in rows]
        self._split_only.add(own)

    def _add_in_proj_split(self, component: str, path: str, group: Mapping[int, _Module]) -> None:
        """An HF CLIP with q/k/v apart: an in_proj-keyed ΔW (3d rows) goes to q, k, v by rows."""
        if sorted(group) != [0, 1, 2] or any("weight" not in m.tensors for m in group.values()):
            return
        entries, start = [], 0
        for i in range(3):
            rows = int(group[i].tensors["weight"].shape[0])
            entries.append((group[i], None, slice(start, start + rows)))
            start += rows
        self._parts[f"{component}:{naming.flat(path)}"] = entries

    # -- constructors ---------------------------------------------------------------------------

    @classmethod
    def from_diffusers(cls, unet: Any, text_encoders: Iterable[Any] | None = None,
                       family: str | None = None) -> "Binding":
        """Bind a diffusers denoiser and its HF text encoders.

        `unet`: a ``UNet2DConditionModel``, or a ``FluxTransformer2DModel`` / ``SD3Transformer2DModel``
        (the transformer of a Flux/SD3 pipeline). `text_encoders`: CLIP encoders at positions 0, 1
        become te1, te2 (None keeps a position), a ``T5EncoderModel`` becomes te3 wherever it is
        listed (so Flux's ``[text_encoder, text_encoder_2]`` and SD3's three encoders can be passed
        as the pipeline holds them). Either may be None (a denoiser-only or text-encoder-only binding)."""
        unet_tensors, unet_names = _live_parameters(unet)
        te_tensors = []
        for i, te in enumerate(text_encoders or ()):
            if te is None:  # a placeholder keeps the positions: [None, te2] binds te2 alone
                continue
            tensors, names = _live_parameters(te)
            if naming_t5.is_t5(tensors):
                te_tensors.append((naming_t5.T5_COMPONENT, naming_t5.T5_NAMESPACE, tensors, names))
            elif i < 2:
                te_tensors.append((f"te{i + 1}", "hf", tensors, names))
            else:
                raise ValueError(f"text encoder {i + 1} is not a T5 encoder; only te1/te2 can be CLIP")
        dit = dit_family(unet_tensors)
        if dit is not None:
            detected = dit[0]
        else:
            shapes = {n: t.shape for n, t in unet_tensors.items()}
            detected = family_from_unet_shapes(shapes, "diffusers", {c: ns for c, ns, _, _ in te_tensors})
        binding = cls(family or detected)
        if unet_tensors:
            if dit is not None:
                binding._add_dit(unet_tensors, unet_names, dit[0], "diffusers")
            else:
                binding._add_unet(unet_tensors, unet_names, "diffusers")
        for component, namespace, tensors, names in te_tensors:
            binding._add_text_encoder(tensors, names, component, namespace)
        logger.debug("bound %d modules of a diffusers %s model", len(binding._primary), binding.family)
        return binding

    @classmethod
    def from_ldm(cls, named_tensors: Mapping[str, Any] | Iterable[tuple[str, Any]], family: str | None = None) -> "Binding":
        """Bind tensors named like an LDM checkpoint or A1111's ``sd_model.named_parameters()``:
        ``model.diffusion_model.*`` (an SD UNet, a Flux BFL or SD3 MMDiT transformer),
        ``cond_stage_model.*``, ``conditioner.embedders.N.*``, ``text_encoders.{clip_l,clip_g,t5xxl}.*``.
        Other tensors (VAE, EMA) are ignored; A1111's ``wrapped.`` hijack level is skipped.
        `named_tensors` may also be an iterable of (name, tensor) pairs."""
        unet: list[tuple[str, Any]] = []
        text: list[tuple[str, str, str, Any, str]] = []
        items = named_tensors.items() if hasattr(named_tensors, "items") else named_tensors
        for name, tensor in items:
            if name.startswith(naming.LDM_UNET_PREFIX):
                unet.append((name[len(naming.LDM_UNET_PREFIX):], tensor))
                continue
            if not name.startswith(("cond_stage_model.", "conditioner.", "text_encoders.")):
                continue
            plain = name.replace(".wrapped.", ".")
            for prefix, component, namespace in naming.LDM_TEXT_PREFIXES + naming.DIT_TEXT_PREFIXES:
                if plain.startswith(prefix):
                    text.append((component, namespace, plain[len(prefix):], tensor, name))
                    break
        return cls.from_parts(unet, text, family=family, unet_prefix=naming.LDM_UNET_PREFIX)

    @classmethod
    def from_parts(cls, unet: Iterable[tuple[str, Any]], text: Iterable[tuple], family: str | None = None,
                   unet_prefix: str = "") -> "Binding":
        """Bind a UNet in the LDM namespace (or a Flux/SD3 transformer in either namespace) and
        text encoders, given already split by component:
        `unet` = (name without prefix, tensor); `text` = (component, namespace "hf"|"openclip"|"t5",
        name within the encoder, tensor[, name as the model calls it]). Used by ``from_ldm`` and
        by hosts whose models are not one module (Forge keeps the UNet and CLIP apart)."""
        unet = dict(unet)
        tes: dict[str, tuple[str, dict[str, Any]]] = {}
        source_names: dict[str, str] = {}  # "component:name" -> name as the model calls it
        for component, namespace, name, tensor, *given in text:
            tes.setdefault(component, (namespace, {}))[1][name] = tensor
            source_names[f"{component}:{name}"] = given[0] if given else f"{component}.{name}"
        dit = dit_family(unet)
        if dit is not None:
            detected = dit[0]
        else:
            shapes = {n: t.shape for n, t in unet.items()}
            detected = family_from_unet_shapes(shapes, "ldm", {c: ns for c, (ns, _) in tes.items()})
        binding = cls(family or detected)
        if unet:
            if dit is not None:  # either namespace: Forge and checkpoints use BFL/MMDiT names
                binding._add_dit(unet, {n: unet_prefix + n for n in unet}, dit[0], dit[1])
            else:
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
        if module is None or key in self._split_only:
            return None
        tensor = module.tensors.get(part)
        if tensor is None:
            return None
        shape = _shape_of(tensor)
        if module.rows is not None:
            shape = (module.rows.stop - module.rows.start,) + shape[1:]
        return Slot(tensor, module.rows, shape, module.block, module.component, module.names[part], part)

    def resolve_parts(self, key: str, part: str = "weight") -> list[tuple[Slot, slice]] | None:
        """For a key whose ΔW rows go to several places of this model: each slot with the rows of
        ΔW that go into it (together they cover ΔW's rows exactly once, in any order). A fused
        BFL/MMDiT key (``double_blocks_0_img_attn_qkv``, ``single_blocks_0_linear1``) on a
        diffusers model gives its q, k, v (and MLP) tensors; the final AdaLayerNorm of the other
        namespace gives the two halves of the same tensor, swapped. A fused or halved tensor's own
        key resolves here too, by the same rows (not whole), so that two LoRAs of a stack, one
        keyed by the parts and one by the whole, add up instead of overwriting each other's rows.
        None when the key is not such
        a key here (``resolve`` then has the answer, or the model has no such module) or a part
        lacks the tensor `part`."""
        entries = self._parts.get(key)
        if entries is None:
            return None
        out = []
        for module, rows, delta_rows in entries:
            tensor = module.tensors.get(part)
            if tensor is None:
                return None
            shape = _shape_of(tensor)
            if rows is not None:
                shape = (rows.stop - rows.start,) + shape[1:]
            out.append((Slot(tensor, rows, shape, module.block, module.component, module.names[part], part),
                        delta_rows))
        return out

    def __contains__(self, key: str) -> bool:
        return key in self._index or key in self._parts

    def match(self, keys: Any) -> tuple[int, int]:
        """(matched, unmatched) counts of module keys (an iterable of keys, or anything with an
        ``adapters`` mapping such as a LoraFile)."""
        keys = getattr(keys, "adapters", keys)
        matched = unmatched = 0
        for key in keys:
            if key in self._index or key in self._parts:
                matched += 1
            else:
                unmatched += 1
        return matched, unmatched

    def unmatched(self, keys: Any) -> list[str]:
        """The keys of `keys` (or of a LoraFile's adapters) this model has no module for."""
        return [k for k in getattr(keys, "adapters", keys) if k not in self]

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
