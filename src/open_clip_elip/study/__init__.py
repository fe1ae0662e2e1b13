"""The study: is ELIP worth it? ``python -m open_clip_elip.study`` (``make study``).

Trains every method (ELIP, its variants and controls, the other families and the token-reduction choices an
OpenCLIP user already has) with OpenCLIP's own trainer on the same shards, several seeds each; scores each run
with clip_benchmark (zero-shot and linear probe); runs the leak diagnostic on every ELIP-family checkpoint; and
writes ``results.csv``, ``results.md``, ``pareto.png`` and ``curves.png``.

One module per job: ``methods`` (the methods as data), ``data`` (shards and evaluation sets), ``configs``
(model configs), ``plan`` (runs, budgets, costs), ``runner`` (training, evaluation, resuming), ``report`` (the
report, from the runs' files only), ``cli`` (the command line). Every run lives in
``OUT/runs/<method>/seed<k>/``; the report is rebuilt from all ``result.json`` files, so a new invocation
merges its runs into the earlier ones.
"""
