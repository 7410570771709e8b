#!/usr/bin/env bash
# Installs what bljust needs on a Debian machine: system packages (speech synthesis for the
# demo corpus, Austen text, sox, flac), then a .venv with the pinned Python requirements and
# the package itself. Safe to re-run: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
              sox libsox-fmt-all flac pocketsphinx-testdata)
# Installed without recommends: with them apt pulls in ~500 R packages.
APT_NO_RECOMMENDS=(r-cran-janeaustenr)

missing=()
for p in "${APT_PACKAGES[@]}" "${APT_NO_RECOMMENDS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "bljust: apt-get not found. Install these Debian/Ubuntu packages (or your system's equivalents):" >&2
    echo "  ${APT_PACKAGES[*]}" >&2
    echo "  ${APT_NO_RECOMMENDS[*]} (without recommended packages)" >&2
    exit 1
  fi
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "bljust: installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  want=(); want_nr=()
  for p in "${missing[@]}"; do
    if [[ " ${APT_NO_RECOMMENDS[*]} " == *" $p "* ]]; then want_nr+=("$p"); else want+=("$p"); fi
  done
  [ ${#want[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${want[@]}"
  [ ${#want_nr[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${want_nr[@]}"
fi

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch is pinned in the same call: lhotse's bare "torch" would otherwise resolve to a
# multi-GB CUDA build on a CPU machine.
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
touch .venv/.installed
