"""Temporary probe: patcher thread policy at full size (SD1.5 L1/L2 slot shapes), torch only."""
import gc, json, sys, time
from types import SimpleNamespace as NS
import torch
import lora_core.patcher.patcher as P
from lora_core.patcher import ActiveLora, Patcher

label = sys.argv[1]
torch.set_num_threads(2)
shapes = json.load(open("bench/_probe_shapes.json"))
torch.manual_seed(0)
tensors = {}
for s in shapes[0] + shapes[1]:
    tensors.setdefault(tuple(s), [])
model = {}
def tensor_for(i, s):
    k = (i, tuple(s))
    if k not in model:
        model[k] = (torch.randn(*s) * 0.05).half()
    return model[k]
class Binding:
    family = "unknown"
    def __init__(self): self.map = {}
    def resolve(self, key, part="weight"):
        if part != "weight": return None
        t = self.map.get(key)
        return None if t is None else NS(tensor=t, rows=None, shape=tuple(t.shape), component="unet", block=None)
binding = Binding()
# L1 touches all, L2 is a subset: give the shared modules the same tensor (by order of shapes)
for i, s in enumerate(shapes[0]):
    binding.map[f"m{i}"] = tensor_for(i, s)
class Ad:
    def __init__(self, key, s, r=32):
        out, inn = s[0], 1
        for d in s[1:]: inn *= d
        self.key = key
        self.up = (torch.randn(out, r) * 0.01).half(); self.down = (torch.randn(r, inn) * 0.01).half()
    def low_rank(self, dyn=None): return self.up, self.down, 0.5
def lora(name, idx):
    return NS(name=name, path=name, family="unknown", unclaimed=[],
              adapters={f"m{i}": Ad(f"m{i}", shapes[0][i]) for i in idx})
L1 = lora("L1", range(len(shapes[0])))
L2 = lora("L2", range(0, len(shapes[0]), 2))
L3 = lora("L3", range(len(shapes[0])))
variants = {"never1": 0, "lt256k": 1 << 18, "lt1M": 1 << 20, "lt4M": 1 << 22, "always1": 1 << 40}
res = {k: [] for k in variants}
for rnd in range(3):
    for name, thr in variants.items():
        P.SMALL_SLOT_ELEMENTS = thr
        p = Patcher(binding)
        gc.collect()
        t0 = time.perf_counter(); p.apply([ActiveLora(L1)]); t1 = time.perf_counter()
        p.apply([ActiveLora(L2)]); t2 = time.perf_counter()
        p.apply([ActiveLora(L1, .8, .8), ActiveLora(L2, .6, .6), ActiveLora(L3, .5, .5)]); t3 = time.perf_counter()
        p.restore()
        res[name].append((t1 - t0, t2 - t1, t3 - t2))
for name, r in res.items():
    best = [min(x[i] for x in r) for i in range(3)]
    print(f"{label} {name:8s} apply1 {best[0]*1000:7.1f} ms  switch {best[1]*1000:7.1f} ms  stack3 {best[2]*1000:7.1f} ms", flush=True)
