# Sourced by the scripts that need Python packages: makes (once) and reuses a virtual
# environment of the project's own, so nothing is installed into the system Python
# (Debian's refuses it: "externally managed"; some lack pip altogether). It lives in
# data/venv, or in IDEMPIPE_VENV when set.
#
# pyenv_ready PACKAGE...: each PACKAGE is "module=requirement" (e.g. "chdb=chdb>=3");
# installs the requirements whose module does not import, then sets $IDEMPIPE_PYTHON to
# the environment's interpreter and exports it (the tests run their Python checks with it).
pyenv_ready() {
  local root venv
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  venv=${IDEMPIPE_VENV:-$root/data/venv}
  if [[ ! -x $venv/bin/python ]]; then
    echo "python: making the virtual environment $venv" >&2
    if ! python3 -m venv "$venv" >&2; then
      # Debian's python3 without its venv module.
      echo "python: installing python3-venv" >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >&2
      python3 -m venv "$venv" >&2
    fi
  fi
  local spec module requirement missing=()
  for spec in "$@"; do
    module=${spec%%=*}
    requirement=${spec#*=}
    "$venv/bin/python" -c "import $module" 2>/dev/null || missing+=("$requirement")
  done
  if ((${#missing[@]})); then
    echo "python: installing ${missing[*]} into $venv" >&2
    "$venv/bin/python" -m pip install --quiet "${missing[@]}" >&2
  fi
  export IDEMPIPE_PYTHON=$venv/bin/python
}
