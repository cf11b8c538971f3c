#!/usr/bin/env bash
# Fetch the photographic wallpapers of the training corpus (see
# shared/corpus/README.md and docs/corpus.md) into DEST, flat, one file per
# photo named by its photo name (Aqua.jpg, BytheWater.jpg, ...), plus each
# package's Debian copyright file in DEST/licenses/PACKAGE.copyright and, for
# each Plasma wallpaper, its upstream metadata (author, licence) in
# DEST/licenses/NAME.metadata.json.
#
#   usage: tools/fetch_corpus_photos.sh DEST
#
# Needs only `apt-get download` (run `apt-get update` once first) and
# `dpkg -x`; nothing is installed. Fails if any listed photo is missing.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DEST" >&2
    exit 2
fi
dest=$1

MATE_PHOTOS=(Aqua Blinds Dune FreshFlower Garden GreenMeadow LadyBird RainDrops Storm TwoWings Wood YellowFlower)
PLASMA_PHOTOS=(BytheWater ColdRipple DarkestHour EveningGlow FallenLeaf Grey Kite OneStandsOut Path Volna summer_1am)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$dest/licenses"

for pkg in mate-backgrounds plasma-workspace-wallpapers; do
    # As root, apt would drop to user _apt, which cannot write into the
    # private temp dir; downloading as root is fine for `apt-get download`.
    (cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null)
    deb=$(ls "$work"/"${pkg}"_*.deb)
    dpkg -x "$deb" "$work/$pkg"
    echo "$(basename "$deb")"
    cp "$work/$pkg/usr/share/doc/$pkg/copyright" "$dest/licenses/$pkg.copyright"
done

root="$work/mate-backgrounds/usr/share/backgrounds/mate/nature"
for name in "${MATE_PHOTOS[@]}"; do
    cp "$root/$name.jpg" "$dest/$name.jpg"
done

# The largest file (by pixel count as encoded in the name WxH, else bytes).
root="$work/plasma-workspace-wallpapers/usr/share/wallpapers"
for name in "${PLASMA_PHOTOS[@]}"; do
    images="$root/$name/contents/images"
    best=$(ls "$images" | awk -F'[x.]' '{ print $1 * $2, $0 }' | sort -n | tail -1 | cut -d' ' -f2-)
    ext=${best##*.}
    cp "$images/$best" "$dest/$name.$ext"
    # Upstream's per-wallpaper author and licence (KDE plugin metadata).
    for meta in "$root/$name"/metadata.*; do
        cp "$meta" "$dest/licenses/$name.${meta##*/}"
    done
    echo "$name: $best"
done

echo "$((${#MATE_PHOTOS[@]} + ${#PLASMA_PHOTOS[@]})) photos in $dest"
