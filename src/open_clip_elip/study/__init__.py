"""The study: is ELIP worth it? ``python -m open_clip_elip.study`` (``make study``).

Trains the methods (ELIP, its variants and controls, the other families and the token-reduction choices an
OpenCLIP user already has, with their tuning protocols) with OpenCLIP's own trainer on the same shards, several
seeds each, in cells of a data regime (``fashion``, ``scenes``) and a schedule (1x, 4x); scores each run with
clip_benchmark (zero-shot, unpruned and scored pruned; the linear probe on request); runs the leak diagnostic on
every ELIP-family checkpoint (and the steering diagnostic on scenes canvases); and writes ``results.csv``,
``verdicts.csv``, ``results.md``, ``pareto_<regime>.png`` and ``curves_<cell>.png``.

One module per job: ``methods`` (the methods as data), ``data`` (shards and evaluation sets), ``configs``
(model configs), ``plan`` (runs, budgets, costs), ``runner`` (training, evaluation, resuming), ``report`` (the
report, from the runs' files only), ``cli`` (the command line), ``pilot`` (stock seeds of candidate scenes
regimes). Every run lives in
``OUT/runs/<cell>/<method>/seed<k>/`` (``<cell>``: e.g. ``fashion-x1``); the report is rebuilt from all
``result.json`` files, so a new invocation merges its runs into the earlier ones.
"""
