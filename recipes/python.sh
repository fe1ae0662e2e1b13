# Sourced by the recipes: sets PYTHON to a Python that has open_clip_elip, or stops with how to get one.
# PYTHON from the environment wins; else this repository's .venv/bin/python (`make install` makes it);
# else python3 from PATH (an activated virtual environment, say).
if [[ -z "${PYTHON:-}" ]]; then
  _repo_venv_python="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/python"
  if [[ -x "$_repo_venv_python" ]]; then PYTHON=$_repo_venv_python; else PYTHON=python3; fi
  unset _repo_venv_python
fi
if ! "$PYTHON" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("open_clip_elip") is None)' \
     2>/dev/null; then
  echo "error: $PYTHON cannot import open_clip_elip: run \`make install\` in the repository (it creates .venv," \
       "which the recipes then use), or set PYTHON to the python of an environment that has it" \
       "(PYTHON=/path/to/venv/bin/python $0 ...)" >&2
  exit 2
fi
