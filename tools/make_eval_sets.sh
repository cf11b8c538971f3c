#!/usr/bin/env bash
# The held-out evaluation folders of docs/default_model.md, cut from the
# corpus folders built as docs/corpus.md says (p32, p64, crops256):
#   heldout32    every 20th of p32/valid, sorted by name (200 patches 32x32)
#   heldout64    every 6th of p64/valid (200 patches 64x64)
#   crops256     all of crops256/valid (32 crops 256x256)
#   dataset1000  every 4th of p32/valid (1000 patches 32x32)
# Files are copied, so the folders stand on their own.
#
#   usage: tools/make_eval_sets.sh CORPUS_DIR DEST
set -euo pipefail
if [[ $# -ne 2 ]]; then
    echo "usage: $0 CORPUS_DIR DEST" >&2
    exit 2
fi
corpus=$1
dest=$2

every() {  # every N-th file of folder SRC (sorted by name) into DEST/NAME
    local src=$1 n=$2 name=$3
    mkdir -p "$dest/$name"
    ls "$src" | LC_ALL=C sort | awk -v n="$n" '(NR - 1) % n == 0' | while read -r f; do
        cp "$src/$f" "$dest/$name/$f"
    done
    echo "$name: $(ls "$dest/$name" | wc -l) images"
}

every "$corpus/p32/valid" 20 heldout32
every "$corpus/p64/valid" 6 heldout64
every "$corpus/crops256/valid" 1 crops256
every "$corpus/p32/valid" 4 dataset1000
