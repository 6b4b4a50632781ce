"""Experiments on the synthetic task, jobs apart from reports:

    settings.py   DemoSettings (task, model, base, budget), `--set` assignments, one method's run config
    data.py       the task's data of an experiment folder, with its manifest
    demo.py       `dartlm demo`: each method once, side by side
    variants.py   what `dartlm compare` runs: methods, ablations and guards as data
    jobs.py       `dartlm compare` / `sweep`: (seed, variant) jobs, resumable, in worker processes; latency after
    report.py     a comparison's summary, table and plots
    bench.py      `dartlm bench`: latency, FLOPs and memory of the variants of one model
    probe.py      `dartlm probe`: what the thoughts carry, per layer and position
"""
