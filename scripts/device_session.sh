#!/usr/bin/env bash
# One command on a lent GPU machine, run from the repository root there: install the kit's wheels (the
# image lacks them), then run the kit's part for at most SECONDS and put the log, session.json and
# results.tar.gz in $OUT (scripts/device_kit.py builds the kit here and says how to call this).
# Usage: bash scripts/device_session.sh KIT [SECONDS]    (PYTHON= another interpreter than python3)
set -euo pipefail
kit=${1:?usage: scripts/device_session.sh KIT [SECONDS]}
python=${PYTHON:-python3}
if compgen -G "$kit/wheels/*.whl" > /dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$kit"/wheels/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec "$python" scripts/device_kit.py run "$kit" --seconds "${2:-540}" --out "${OUT:?set OUT: the folder whose files come back}"
