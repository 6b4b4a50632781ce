"""Real processes: two writers on one output, a base rebuilt under a reader, SIGKILL during export, during a result
write and during a rebuild. Afterwards nothing half-written is ever trusted.

Every random choice is drawn from a seed that the test prints (`pytest -s` shows it); set DARTLM_FAULT_SEED to
replay a failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dartlm.config import load_config
from dartlm.model.base_lm import BaseModelSpec, is_built
from dartlm.model.export import model_fingerprint
from dartlm.storage import LockedError, OutputLock
from dartlm.exports.run import export_run
from dartlm.training.run import train

from conftest import write_arithmetic_file

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def python(code: str, *, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env={**ENV, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(process: subprocess.Popen, text: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        if text in line:
            return
        assert time.monotonic() < deadline, f"no {text!r} line in time"
    raise AssertionError(f"process ended before printing {text!r}: {process.stderr.read()[-2000:]}")


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_frees_the_output(tmp_path):
    holder = python(f"""
        from dartlm.storage import OutputLock
        import time
        with OutputLock({str(tmp_path / "out")!r}, "run folder"):
            print("locked", flush=True)
            time.sleep(600)
    """, cwd=tmp_path)
    wait_for_line(holder, "locked")
    with pytest.raises(LockedError, match=rf"another dartlm process is writing this run folder \(pid {holder.pid} "):
        with OutputLock(tmp_path / "out", "run folder"):
            pass
    kill(holder)  # the kernel releases a dead holder's lock: no stale lock survives a SIGKILL
    with OutputLock(tmp_path / "out", "run folder"):
        pass


def test_two_trainings_into_one_run_folder(tmp_path, train_file):
    first = subprocess.Popen([sys.executable, "-m", "dartlm.cli", "train", "tiny/nocot", f"data.train_path={train_file}",
                              "training.max_steps=100000", "training.logging_steps=1", "--output-dir", "run"],
                             cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        wait_for_line(first, "'loss'")
        second = subprocess.run([sys.executable, "-m", "dartlm.cli", "train", "tiny/nocot",
                                 f"data.train_path={train_file}", "--output-dir", "run", "--overwrite"],
                                cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        (error,) = [line for line in second.stderr.splitlines() if line.startswith("dartlm train: error:")]
        assert f"another dartlm process is writing this run folder (pid {first.pid}" in error
        assert first.poll() is None, "the first writer must be untouched"
    finally:
        kill(first)


def test_sigkill_during_export_never_leaves_a_half_export(tmp_path, train_file, fault_rng):
    config = load_config("tiny/dart", [f"data.train_path={train_file}", "training.max_steps=2",
                                       "training.batch_size=4"])
    train(config, tmp_path / "run")
    out = tmp_path / "export"
    export_run(tmp_path / "run", out, log=lambda *_: None)
    old = model_fingerprint(out)
    # Stretch the export's writing phase so that a random kill lands inside it, then kill at a random point.
    code = f"""
        import time
        from pathlib import Path
        import safetensors.torch, dartlm.storage as storage
        from dartlm.exports.run import export_run
        slow = safetensors.torch.save_file
        def save_file(*args, **kwargs):
            time.sleep(0.2)
            return slow(*args, **kwargs)
        safetensors.torch.save_file = save_file
        print("exporting", flush=True)
        export_run(Path({str(tmp_path / "run")!r}), Path({str(out)!r}), force=True, log=lambda *_: None)
        print("exported", flush=True)
    """
    outcomes = []
    for attempt in range(3):
        process = python(code, cwd=tmp_path)
        wait_for_line(process, "exporting")
        time.sleep(fault_rng.uniform(0.0, 3.0))
        finished = process.poll() is not None
        kill(process)
        # Whatever the moment, the folder is a whole export: the old one or the new one (same weights here),
        # each file as its manifest lists it, and it loads.
        assert model_fingerprint(out) == old
        outcomes.append("after" if finished else "during")
    # A killed export may leave its staging folder behind: hidden, never read, and no obstacle to the next export.
    assert all(p.name.startswith(".") for p in tmp_path.iterdir() if p.name not in ("run", "export", "train.txt"))
    print("kill moments:", outcomes)
    export_run(tmp_path / "run", out, force=True, log=lambda *_: None)
    assert model_fingerprint(out) == old


def test_sigkill_during_a_result_write_leaves_the_old_or_the_new_file(tmp_path, fault_rng):
    path = tmp_path / "result.json"
    code = f"""
        from dartlm.storage import write_json
        big = {{"values": list(range(200_000))}}
        print("writing", flush=True)
        for round in range(10_000):
            write_json({str(path)!r}, {{"round": round, **big}})
    """
    process = python(code, cwd=tmp_path)
    wait_for_line(process, "writing")
    for _ in range(5):
        time.sleep(fault_rng.uniform(0.0, 0.3))
        if path.exists():
            json.loads(path.read_text())  # a reader never sees a torn file
    kill(process)
    data = json.loads(path.read_text())
    assert data["values"][-1] == 199_999
    # What the kill interrupted is a hidden temporary file, never the result itself.
    assert all(p.name.startswith(".result.json.") for p in tmp_path.iterdir() if p != path)


BASE = dict(layers=1, hidden=32, heads=2, vocab_size=300, lines=2000, steps=2, batch_size=4, seq_len=32)


def test_a_rebuilt_base_replaces_the_old_one_under_a_reader_and_a_killed_rebuild_keeps_it(tmp_path, fault_rng):
    env = {"DARTLM_CACHE": str(tmp_path / "cache")}
    os.environ["DARTLM_CACHE"] = str(tmp_path / "cache")  # this process reads the same cache
    try:
        spec = BaseModelSpec(**BASE)
        build = f"""
            import sys, time
            from dartlm.model.base_lm import BaseModelSpec, ensure_base
            spec = BaseModelSpec(**{BASE!r})
            for round in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
                ensure_base(spec, rebuild=True, log=lambda *_: None)
                print("rebuilt", flush=True)
        """
        first = python(build.replace("if len(sys.argv) > 1 else 3", "if False else 1"), cwd=tmp_path, env=env)
        assert first.wait(timeout=600) == 0, first.stderr.read()[-2000:]
        folder = spec.folder()
        assert is_built(folder)

        from transformers import AutoConfig

        rebuilder = python(build, cwd=tmp_path, env=env)
        reads = 0
        while rebuilder.poll() is None:
            # A reader at any moment finds a complete base under the name.
            assert is_built(folder), "the base folder was missing or incomplete during a rebuild"
            AutoConfig.from_pretrained(folder)
            reads += 1
        assert rebuilder.returncode == 0, rebuilder.stderr.read()[-2000:]
        assert reads > 10

        killed = python(build, cwd=tmp_path, env=env)
        time.sleep(fault_rng.uniform(0.5, 6.0))
        kill(killed)
        assert is_built(folder)
        AutoConfig.from_pretrained(folder)
        with open(folder / "dartlm_base.json") as handle:
            assert json.load(handle)["spec"]["steps"] == BASE["steps"]
    finally:
        os.environ.pop("DARTLM_CACHE", None)


def test_sigkill_during_an_evaluation_resumes_to_the_same_result(tmp_path, train_file, fault_rng):
    config = load_config("tiny/nocot", [f"data.train_path={train_file}", "training.max_steps=2",
                                        "training.batch_size=4"])
    train(config, tmp_path / "run")
    export_run(tmp_path / "run", tmp_path / "model", log=lambda *_: None)
    data = tmp_path / "test.txt"
    write_arithmetic_file(data, count=40, seed=7)
    command = [sys.executable, "-m", "dartlm.cli", "eval", "model", "--benchmark", "gsm8k", "--data-path", str(data),
               "--output", "out/eval.json", "--latency-items", "0"]
    reference = subprocess.run(command[:-4] + ["--output", "ref/eval.json", "--latency-items", "0"], cwd=tmp_path,
                               env=ENV, capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]
    process = subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stream = tmp_path / "out" / "eval.jsonl"
    deadline = time.monotonic() + 300
    target = fault_rng.randint(2, 30)
    while (not stream.exists() or len(stream.read_text().splitlines()) < target) and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ours = [json.loads(line) for line in stream.read_text().splitlines()[1:]]
    ref = [json.loads(line) for line in (tmp_path / "ref" / "eval.jsonl").read_text().splitlines()[1:]]
    assert sorted(r["id"] for r in ours) == sorted(r["id"] for r in ref)
    assert {r["id"]: r["output"] for r in ours} == {r["id"]: r["output"] for r in ref}
