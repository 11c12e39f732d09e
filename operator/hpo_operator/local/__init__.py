"""The embedded backend, `hpo run`: a study's trials as processes on this machine.

- runner.py: the loop (look, ask the core, act) and the study's life (``LocalRunner``, ``RunOptions``);
- slots.py: where trials run (GPUs, else CPU shares);
- reports.py: a trial's report file, read as it grows;
- supervision.py: a trial as a process (its record, its exit, its log);
- document.py: study.json and best.json (the typed result document, written atomically);
- progress.py and plot.py: what a person sees, live or from study.json.
"""
