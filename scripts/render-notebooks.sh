#!/usr/bin/env bash
# Execute the example notebooks and render them to HTML in docs/notebooks/.
#
#   scripts/render-notebooks.sh              # all notebooks in examples/notebooks/
#   scripts/render-notebooks.sh examples/notebooks/02-azimuthal-integration.ipynb
#
# Each notebook makes its own data in a temporary directory, so this runs anywhere pulsetrain
# is installed (with the test extras: nbconvert, ipykernel, matplotlib).  The notebooks in
# examples/ stay without outputs; only the HTML files carry them.
set -euo pipefail

cd "$(dirname "$0")/.."
out=docs/notebooks
mkdir -p "$out"
if [ "$#" -gt 0 ]; then
    notebooks=("$@")
else
    notebooks=(examples/notebooks/*.ipynb)
fi
for nb in "${notebooks[@]}"; do
    echo "rendering $nb"
    python -m jupyter nbconvert --to html --execute \
        --ExecutePreprocessor.timeout=600 \
        --ExecutePreprocessor.kernel_name=python3 \
        --output-dir "$out" "$nb"
done
ls -l "$out"
