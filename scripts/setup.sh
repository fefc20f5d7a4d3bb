#!/usr/bin/env bash
# Sets up what torchdojo needs on a fresh machine; safe to run again (it skips what is done).
#   scripts/setup.sh          virtualenv with the pinned packages + the Fashion-MNIST data
#   scripts/setup.sh --test   the same, plus the test tools and headless Chromium
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
want_test=0; [ "${1:-}" = "--test" ] && want_test=1

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
apt_install() {  # apt_install PACKAGE...: Debian packages, quietly; returns non-zero when apt is unusable
  command -v apt-get >/dev/null || return 1
  if [ ! -f /tmp/.torchdojo-apt-updated ]; then sudo_ apt-get update -qq >/dev/null && touch /tmp/.torchdojo-apt-updated; fi
  DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq "$@" >/dev/null
}

# 1. Virtualenv with the pinned torch/torchvision (pip takes them from local wheels where present).
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PY"
  "$PY" -m venv .venv
fi
extras="pretrained,text,metric"; [ $want_test = 1 ] && extras="$extras,test"
stamp=".venv/.torchdojo-$(cat pyproject.toml | sha1sum | cut -c1-12)-$extras"
if [ ! -f "$stamp" ]; then
  echo "setup: installing packages (torch==2.14.1, torchvision==0.29.1, torchdojo[$extras]); first time takes a few minutes"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -m pip install -q -e ".[$extras]" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import torch, torchvision, torchdojo" || { echo "setup: package install failed" >&2; exit 1; }
  rm -f .venv/.torchdojo-*; touch "$stamp"
fi

# 2. Data: Fashion-MNIST from Debian's dataset-fashion-mnist, else a download (needs the internet).
if ! .venv/bin/python -c "from torchdojo.data import DATASETS; from torchdojo.data.base import find_dataset; find_dataset(DATASETS.get('fashion-mnist'))" 2>/dev/null; then
  echo "setup: getting Fashion-MNIST"
  apt_install dataset-fashion-mnist || .venv/bin/torchdojo data --download fashion-mnist
fi

# 3. Tests only: headless Chromium for the browser test of the HTML report.
if [ $want_test = 1 ] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  echo "setup: installing headless Chromium (Debian package chromium) for the report browser test"
  apt_install chromium || echo "setup: chromium not installed; the browser test will be skipped" >&2
fi
