"""Train tiny/dart through the Python API and save this rank's trainable weights (run under torchrun or alone)."""

import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from dartlm.config import load_config
from dartlm.training.run import train
from dartlm.training.trainer import trainable_state

run_dir, out_dir, *overrides = sys.argv[1:]
trainer = train(load_config("tiny/dart", overrides), Path(run_dir))
rank = int(os.environ.get("RANK", "0"))
save_file(trainable_state(trainer.accelerator.unwrap_model(trainer.model)), f"{out_dir}/rank{rank}.safetensors")
print(f"rank {rank} of {trainer.args.world_size} done")
