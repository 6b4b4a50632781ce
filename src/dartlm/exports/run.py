"""From a finished run to a folder that stock tools load: merge the adapters (checked), save the method's side
modules beside the model, write the model card and the manifest, and swap the folder in atomically."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from dartlm import storage
from dartlm.config import Config
from dartlm.data.readers import DataError
from dartlm.data.sources import load_examples
from dartlm.exports.card import write_model_card
from dartlm.generate import left_padded, prompt_ids
from dartlm.model.export import (
    DEFAULT_TOLERANCE,
    PromptSpec,
    export_model,
    write_manifest,
)
from dartlm.model.loading import DTYPES
from dartlm.storage import OutputLock, remove_tree
from dartlm.thinking import side_module_files
from dartlm.training.folder import RunError, RunFolder
from dartlm.training.prepare import load_trained

PROBE_QUESTIONS = (
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "What is 12 times 7?",
    "A train travels 60 miles per hour for 2 hours and then 45 miles per hour for 3 hours. How far does it go?",
)


def export_run(run_dir: Path, out_dir: Path, *, checkpoint: str | None = None, force: bool = False,
               tolerance: float | None = None, results: list[dict] | None = None, dtype: str | None = None,
               log=print):
    """Merge a trained run into a plain HF folder (checked in float64, saved in `dtype`, by default the run's), with
    its model card (README.md; `results`: `dartlm eval` summaries to put in it).

    The folder is written whole under a temporary name, its manifest (every file's sha256) last, and then takes
    out_dir's place by rename: a kill at any point leaves the old export or the new one, never a mixture.
    """
    tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
    folder = RunFolder(run_dir)
    with OutputLock(out_dir, "export folder"):
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not force:
            raise RunError(f"{out_dir}: the output folder is not empty; pass --force to overwrite it")
        save_dtype = DTYPES[dtype or folder.config.model.dtype]
        run = load_trained(folder, checkpoint, dtype="float32")
        spec = run.method.prompt_spec()
        probe = left_padded(prompt_ids(PROBE_QUESTIONS, run.tokenizer, spec), run.tokenizer.pad_token_id)
        # CODI's projection and Quiet-STaR's head are not part of the architecture: saved on their own, beside it.
        files = side_module_files()
        side = {name: getattr(run.model, name) for name in files if hasattr(run.model, name)}
        for name in side:
            delattr(run.model, name)
        staged = storage.staging_folder(out_dir)
        try:
            check = export_model(run.model, run.tokenizer, spec, probe, staged, tolerance=tolerance,
                                 dtype=save_dtype, log=log)
            for name, module in side.items():
                state = {k: v.detach().to(save_dtype).contiguous().cpu() for k, v in module.state_dict().items()}
                storage.save_safetensors(state, staged / files[name])
            write_run_card(folder, staged, check=check, results=results)
            write_manifest(staged, source=str(run_dir.resolve()), checkpoint=checkpoint)
            storage.replace_folder(staged, out_dir)
        finally:
            remove_tree(staged)
    return check


def write_run_card(run: RunFolder | Path, out_dir: Path, *, check=None, results: list[dict] | None = None) -> Path:
    """(Re)write the model card of a folder exported from a run, e.g. once it has been evaluated."""
    folder = run if isinstance(run, RunFolder) else RunFolder(run)
    config, method = folder.config, folder.method
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    return write_model_card(out_dir, PromptSpec.load(out_dir), tokenizer, config, check=check, results=results,
                            terms=folder.final_terms(), question=example_question(config),
                            about=(method.title or method.name, method.description),
                            method_lines=method.card_lines(config))


def example_question(config: Config) -> str:
    """The first training question when the training file is at hand (the card's snippet asks it), else a probe."""
    path = Path(config.data.train_path)
    if path.is_file():
        try:
            examples = load_examples(str(path), format=config.data.format, skip_invalid=True)
            if examples:
                return examples[0].question
        except (DataError, OSError, ValueError):
            pass
    return PROBE_QUESTIONS[0]
