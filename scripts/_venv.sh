# Sourced by the scripts: create .venv when missing and install the package (editable) into it.
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
extra="${1:-}"
if [ ! -x "$venv/bin/python" ]; then
    echo "driftwatch: creating $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
stamp="$venv/.installed${extra:+-$extra}"
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
    echo "driftwatch: installing the package${extra:+ with [$extra]} into $venv" >&2
    "$venv/bin/python" -m pip install --quiet -e "$repo${extra:+[$extra]}"
    touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
