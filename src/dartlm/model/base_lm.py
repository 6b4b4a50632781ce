"""A small pretrained base model for CPU experiments in the paper's regime (a pretrained base, frozen, plus LoRA).

`build_base` trains a tokenizer and a Llama-style model from scratch on general arithmetic text
(`dartlm.data.arithmetic_text`, not the evaluation task) with the plain causal-LM loss, and writes a Hugging Face
folder under the cache (`$DARTLM_CACHE/models/arith-base-...`, like the SmolLM2 conversion). The folder name holds
a hash of every setting, so a changed setting builds a new base and an unchanged one is reused; `dartlm base
--rebuild` builds it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from dartlm.data.arithmetic_text import ArithmeticText, corpus
from dartlm.model.offline import cache_dir
from dartlm.storage import OutputLock, digest, file_hashes, replace_folder, staging_folder, write_json

logger = logging.getLogger(__name__)

BASE_FILE = "dartlm_base.json"  # written last: a folder without it is not a finished build


@dataclass(frozen=True)
class BaseModelSpec:
    """Architecture, corpus and pretraining budget of the base model."""

    layers: int = 4
    hidden: int = 128
    heads: int = 4
    vocab_size: int = 1024
    text: ArithmeticText = field(default_factory=ArithmeticText)
    lines: int = 200_000  # corpus size (each line is used about steps * batch * seq_len / tokens times)
    steps: int = 2000
    batch_size: int = 32
    seq_len: int = 64
    lr: float = 3e-3
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]

    def folder(self) -> Path:
        return cache_dir() / "models" / f"arith-base-{self.layers}x{self.hidden}-{self.key()}"


class PackedText(Dataset):
    """The corpus as one token stream (every line ends with eos), cut into blocks of seq_len tokens."""

    def __init__(self, lines: list[str], tokenizer, seq_len: int):
        stream: list[int] = []
        for ids in tokenizer(lines, add_special_tokens=False)["input_ids"]:
            stream.extend(ids + [tokenizer.eos_token_id])
        blocks = len(stream) // seq_len
        self.blocks = torch.tensor(stream[: blocks * seq_len]).view(blocks, seq_len)  # (N, seq_len)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        block = self.blocks[index]
        return {"input_ids": block, "labels": block}


def is_built(folder: Path) -> bool:
    return (folder / BASE_FILE).is_file()


def base_content(folder: Path) -> str:
    """What a built base is to the jobs that fine-tune it: its settings and the sha256 of its weights, config and
    tokenizer. Two builds with the same bytes are one base, whatever their build notes say (a note records the wall
    time of its build); a build that rounds differently (another CPU, another thread count) is another base."""
    note = json.loads((folder / BASE_FILE).read_text(encoding="utf-8"))
    return digest({"spec": note["spec"], "files": file_hashes(folder, exclude=(BASE_FILE, SHIPPED_FILE))})


# Bases shipped inside the package (dartlm/assets/base/<cache folder name>/), so that every machine fine-tunes the
# very same weights: a base built on another CPU differs by rounding from the first step on.
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "assets" / "base"
SHIPPED_FILE = "dartlm_shipped.json"  # sha256 of every file of a shipped base


class ShippedBaseError(RuntimeError):
    """A shipped base does not match its recorded hashes."""


def shipped_base(spec: BaseModelSpec) -> Path | None:
    """The base shipped in the package for exactly these settings, if there is one."""
    folder = SHIPPED_DIR / spec.folder().name
    return folder if (folder / SHIPPED_FILE).is_file() else None


def verify_shipped(folder: Path) -> dict:
    """The shipped base's record, after checking every file against its sha256 (ShippedBaseError if not)."""
    record = json.loads((folder / SHIPPED_FILE).read_text(encoding="utf-8"))
    found = file_hashes(folder, exclude=(SHIPPED_FILE,))
    if found != record["files"]:
        changed = sorted(n for n in set(found) | set(record["files"]) if found.get(n) != record["files"].get(n))
        raise ShippedBaseError(f"{folder}: the shipped base does not match its hashes ({', '.join(changed)}); "
                               "reinstall dartlm, or build a base with `dartlm base --rebuild`")
    return record


def ship_base(spec: BaseModelSpec, source: Path, dest_root: Path = SHIPPED_DIR) -> Path:
    """Copy a built base into the package tree with the sha256 of every file (a maintainer's step)."""
    dest = dest_root / spec.folder().name
    staged = staging_folder(dest)
    try:
        for path in sorted(source.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                shutil.copy2(path, staged / path.name)
        files = file_hashes(staged)
        write_json(staged / SHIPPED_FILE, {"spec": asdict(spec), "files": files, "content": digest(files)})
        replace_folder(staged, dest)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return dest


def ensure_base(spec: BaseModelSpec, *, rebuild: bool = False, shipped: bool = False, log=print) -> Path:
    """The cached base folder for spec: the cached one; else the one shipped in the package (checked against its
    hashes and copied into the cache); else built from scratch. `rebuild` builds it from scratch whatever is there,
    `shipped` puts the shipped one back.

    Builders take turns (a second one waits for the first, then finds the base ready); readers never wait: a new
    base takes the old one's place in one rename, so a reader always finds a complete base.
    """
    folder = spec.folder()
    if is_built(folder) and not (rebuild or shipped):
        return folder
    with OutputLock(folder, "base model", wait=True):
        if is_built(folder) and not (rebuild or shipped):
            return folder  # another process made it while this one waited
        source = shipped_base(spec)
        if shipped and source is None:
            raise ShippedBaseError(f"no base is shipped for these settings ({folder.name}); shipped: "
                                   f"{', '.join(p.name for p in SHIPPED_DIR.glob('*')) or 'none'}")
        if source is not None and not rebuild:
            record = _copy_checked(source, folder)
            log(f"base model: the one shipped with dartlm ({source.name}, content {record['content']})")
            return folder
        return build_base(spec, folder, log=log)


def _copy_checked(source: Path, folder: Path) -> dict:
    """Check a shipped (or archived) base against its hashes, then publish it at folder in one rename."""
    record = verify_shipped(source)
    staged = staging_folder(folder)
    try:
        shutil.copytree(source, staged, dirs_exist_ok=True)
        replace_folder(staged, folder)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return record


def install_base(source: Path, *, log=print) -> Path:
    """Put a base written by `ship_base` somewhere else than the package (e.g. a study's archive) into the cache.

    A study that outlives its machine keeps its bases this way: a base rebuilt on a machine that rounds differently
    is another base (base_content), and the study's finished jobs would be refused by their fingerprints. A cache
    that already holds the same weights is left as it is; one that holds another build of the same settings is
    refused rather than replaced, since jobs already run on it would then be mixed with jobs on the archived one.
    """
    record = json.loads((source / SHIPPED_FILE).read_text(encoding="utf-8"))
    spec = BaseModelSpec(**{**record["spec"], "text": ArithmeticText(**record["spec"]["text"])})
    folder = spec.folder()
    if folder.name != source.name:
        raise ShippedBaseError(f"{source}: its settings make the folder {folder.name}, not {source.name}")
    with OutputLock(folder, "base model", wait=True):
        if is_built(folder):
            if base_content(folder) != base_content(source):
                raise ShippedBaseError(f"{folder}: the cache holds another build of this base than {source} (their "
                                       f"weights differ); move it away to install the archived one")
            return folder
        record = _copy_checked(source, folder)
    log(f"base model: installed {source.name} from {source.parent} (content {record['content']})")
    return folder


def build_base(spec: BaseModelSpec, folder: Path, *, log=print) -> Path:
    """Pretrain the base and publish it atomically at folder; returns folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments, set_seed

    from dartlm.model.tiny import train_tokenizer

    started = time.perf_counter()
    log(f"building the base model ({spec.layers} layers, hidden {spec.hidden}; {spec.steps} steps of "
        f"{spec.batch_size} x {spec.seq_len} tokens on general arithmetic text) into {folder}")
    set_seed(spec.seed)
    lines = corpus(spec.text, spec.lines)
    tokenizer = train_tokenizer(lines[:20_000], vocab_size=spec.vocab_size)
    config = AutoConfig.for_model(
        "llama", vocab_size=len(tokenizer), hidden_size=spec.hidden, intermediate_size=4 * spec.hidden,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
        max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = AutoModelForCausalLM.from_config(config)
    data = PackedText(lines, tokenizer, spec.seq_len)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_folder(folder)
    try:
        args = TrainingArguments(
            output_dir=str(tmp / "trainer"), max_steps=spec.steps, per_device_train_batch_size=spec.batch_size,
            learning_rate=spec.lr, warmup_steps=0.03, lr_scheduler_type="cosine", weight_decay=0.0,
            seed=spec.seed, logging_steps=max(1, spec.steps // 10), save_strategy="no", report_to="none",
            use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=data)
        trainer.train()
        losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        note = {"spec": asdict(spec), "final_loss": losses[-1] if losses else None, "losses": losses,
                "tokens_seen": spec.steps * spec.batch_size * spec.seq_len, "corpus_tokens": data.blocks.numel(),
                "parameters": sum(p.numel() for p in model.parameters()),
                "train_s": round(time.perf_counter() - started, 1)}
        write_json(tmp / BASE_FILE, note)  # last: the folder is a finished build
        replace_folder(tmp, folder)  # an old base is swapped out by rename, never deleted first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"base model ready in {note['train_s']:.0f} s (final LM loss {note['final_loss']})")
    return folder
