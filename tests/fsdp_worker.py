"""DART under FSDP2 (fully_shard per decoder layer, then the root) on CPU: run by torchrun with 2 processes.

Every rank also keeps an unsharded copy of the same model and computes, for each rank's half of the batch, the
gradient one process would get for it; the average of the two is what any data-parallel run must produce. The
sharded model trains its half with the early L_CoT backward (two backward passes per step) and REM switched off for
the CoT pathway. Then the trainable weights are saved and loaded back as dartlm does (gathered, re-sharded). Writes this
rank's per-step losses and largest gradient and weight differences as JSON.
"""

import copy
import json
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM, AutoTokenizer

from dartlm.data.example import Example
from dartlm.data.layout import DartCollator
from dartlm.methods.dart import DartLossSettings, dart_loss
from dartlm.model.adapters import ST_TOKEN, LoraSettings, add_special_token, attach_adapters, ensure_pad_token
from dartlm.model.loading import resolve_asset
from dartlm.model.rem import RemSettings

from conftest import dart_features
from dartlm.model.tiny import tiny_config
from dartlm.training.trainer import load_trainable_state, trainable_state

STEPS = 3
out_path, distill_grad = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
mesh = init_device_mesh("cpu", (world,))

tokenizer = AutoTokenizer.from_pretrained(resolve_asset("dartlm:tiny-tokenizer"))
ensure_pad_token(tokenizer)
torch.manual_seed(0)
base = AutoModelForCausalLM.from_config(tiny_config("llama", len(tokenizer), hidden=64, layers=2, heads=4, kv_heads=2))
st_id = add_special_token(base, tokenizer, ST_TOKEN)
model = attach_adapters(base, LoraSettings(rank=8, alpha=16), RemSettings(rank=8, alpha=16))
generator = torch.Generator().manual_seed(1)
with torch.no_grad():  # LoRA's B and REM's up start at zero: make every adapter matter from the first step
    for param in model.parameters():
        if param.requires_grad:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
examples = [Example(f"Tom has {a} apples and buys {b} more. How many apples?", (f"<<{a}+{b}={a + b}>>",), str(a + b))
            for a, b in ((11, 22), (13, 24), (15, 26), (17, 28))]  # equal token counts
batch = DartCollator(tokenizer.pad_token_id)([dart_features(e, tokenizer, st_id, 4) for e in examples])
halves = [{p: {k: v[i::world] for k, v in t.items()} for p, t in batch.items()} for i in range(world)]
settings = DartLossSettings(distill_weight=20.0, distill_grad=distill_grad)

reference = copy.deepcopy(model).train()
sharded = model.train()
for layer in sharded.base_model.model.model.layers:
    fully_shard(layer, mesh=mesh)
fully_shard(sharded, mesh=mesh)

trainable = [n for n, p in reference.named_parameters() if p.requires_grad]
ref_opt = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
opt = torch.optim.AdamW([p for p in sharded.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)


def full(tensor):
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


record = {"rank": rank, "losses": [], "reference_losses": [], "grad_diff": [], "grad_scale": [], "weight_diff": []}
for step in range(STEPS):
    # One process's view of data parallelism: the mean of the halves' gradients, unsharded, early backward too.
    ref_opt.zero_grad()
    ref_losses = []
    for half in halves:
        out = dart_loss(reference, half, settings, backward=lambda part: (part / world).backward())
        (out.total / world).backward()
        ref_losses.append(out.total.item())
    opt.zero_grad()
    out = dart_loss(sharded, halves[rank], settings, backward=lambda part: part.backward())
    out.total.backward()
    grads = dict(zip(trainable, (full(p.grad) for n, p in sharded.named_parameters() if p.requires_grad)))
    ref_grads = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    record["grad_diff"].append(max((grads[n] - ref_grads[n]).abs().max().item() for n in trainable))
    record["grad_scale"].append(max(ref_grads[n].abs().max().item() for n in trainable))
    record["losses"].append(out.total.item())
    record["reference_losses"].append(ref_losses[rank])
    opt.step()
    ref_opt.step()
    weights = {n: full(p.detach()) for n, p in sharded.named_parameters() if p.requires_grad}
    record["weight_diff"].append(max((weights[n] - p.detach()).abs().max().item()
                                     for n, p in reference.named_parameters() if p.requires_grad))
# The run's trainable weights as dartlm saves them (gathered from the shards) and loads them back (re-sharded).
state, expected = trainable_state(sharded), trainable_state(reference)
record["saved_diff"] = max((state[n] - expected[n]).abs().max().item() for n in expected)
record["saved_names_match"] = sorted(state) == sorted(expected)
saved_path = out_path.format(rank="weights") + ".safetensors"
if rank == 0:
    save_file(expected, saved_path)
dist.barrier()
with torch.no_grad():
    for p in sharded.parameters():
        if p.requires_grad:
            p.zero_()
load_trainable_state(sharded, saved_path)
reloaded = trainable_state(sharded)
record["reloaded_diff"] = max((reloaded[n] - expected[n]).abs().max().item() for n in expected)
record["trainable"] = len(trainable)
record["rem_params"] = sum(".rem" in n for n in trainable)
with open(out_path.format(rank=rank), "w") as handle:
    json.dump(record, handle)
dist.destroy_process_group()
print(f"rank {rank} of {world} done")
