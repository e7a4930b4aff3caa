#!/usr/bin/env bash
# Regenerate the image's locks (`make image-lock`) after a distribution's dependencies
# change. pip-compile (pip-tools, in the dev environment) resolves them for Python 3.11,
# the image's Python, with every file's hash, so the Dockerfile installs them with
# `pip install --require-hashes --no-deps` and a build is reproducible.
#
#   image/requirements.lock        third-party packages of core, operator, sidecar, node
#   image/build-requirements.lock  the build backend (setuptools) for their wheels
#
# capinfer's own distributions are left out of the lock: they are built from this tree.
# Pins already in a lock are kept where they still fit (pip-compile's rule);
# `image/lock.sh --upgrade` (or `make image-lock LOCK_ARGS=--upgrade`) moves them all.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PIP_COMPILE="${PIP_COMPILE:-.venv/bin/pip-compile}"
[[ -x "$PIP_COMPILE" ]] || { echo "lock.sh: no $PIP_COMPILE (make setup installs it)" >&2; exit 2; }
python_version="$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[[ "$python_version" == 3.11 ]] || { echo "lock.sh: the image runs Python 3.11, not $python_version" >&2; exit 2; }

compile() {
    local input="$1" output="$2" raw
    shift 2
    raw="$(mktemp)"
    [[ ! -f "$output" ]] || cp "$output" "$raw"
    # PIP_FIND_LINKS from the environment would be written into the lock; the index alone.
    PIP_FIND_LINKS='' CUSTOM_COMPILE_COMMAND='make image-lock' "$PIP_COMPILE" --quiet --generate-hashes --allow-unsafe --strip-extras \
        --no-emit-index-url --no-emit-find-links --no-emit-trusted-host --newline=LF \
        "$@" --output-file "$raw" "$input"
    # Drop capinfer's own distributions (local paths, unhashable) and pip-compile's warning.
    python3 - "$raw" "$output" <<'PY'
import re
import sys

text = open(sys.argv[1]).read()
text = re.sub(r"^# WARNING: pip install will require.*\n(?:# Consider.*\n)?", "", text, flags=re.M)
text = re.sub(r"^capinfer[a-z-]* @ file:.*\n(?:    #.*\n)*", "", text, flags=re.M)
text = text.replace(sys.argv[1], sys.argv[2])
open(sys.argv[2], "w").write(text)
PY
    rm -f "$raw"
}

compile image/requirements.in image/requirements.lock "$@"
compile image/build-requirements.in image/build-requirements.lock "$@"
echo "lock.sh: wrote image/requirements.lock and image/build-requirements.lock" >&2
