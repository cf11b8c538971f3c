#!/usr/bin/env bash
# Fetch the 127 photos of gcompris-qt-data (inside Qt .rcc bundles; see
# shared/corpus/README.md and docs/corpus.md) into DEST, flat, named
# gc_<activity>_<folder>_<name>.webp, plus the package's Debian copyright
# file and each bundle's README (per-image author, source and licence) in
# DEST/licenses/.
#
#   usage: tools/fetch_gcompris_photos.sh DEST     (from the repository, venv active)
#
# Needs `apt-get download` (run `apt-get update` once first), `dpkg -x` and
# aribbps installed (`python -m aribbps.data extract-rcc`).
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DEST" >&2
    exit 2
fi
dest=$1
ACTIVITIES=(details erase explore_farm_animals explore_monuments explore_world_animals)
PHOTOS_EXPECTED=127

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$dest/licenses"
pkg=gcompris-qt-data
(cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null)
deb=$(ls "$work"/"${pkg}"_*.deb)
dpkg -x "$deb" "$work/$pkg"
echo "$(basename "$deb")"
cp "$work/$pkg/usr/share/doc/$pkg/copyright" "$dest/licenses/$pkg.copyright"

bundles=()
for name in "${ACTIVITIES[@]}"; do
    bundles+=("$work/$pkg/usr/share/gcompris-qt/rcc/$name.rcc")
done
python -m aribbps.data extract-rcc "${bundles[@]}" --out "$dest" --prefix gc_ --notices "$dest/licenses"
found=$(ls "$dest"/gc_*.webp | wc -l)
if [[ $found -ne $PHOTOS_EXPECTED ]]; then
    echo "expected $PHOTOS_EXPECTED photos, found $found (another package version?)" >&2
    exit 1
fi
