#!/usr/bin/env bash
# Put a copy of MathJax 3, taken from the npm registry, in the folder that the book's
# html_static_path names, so that the built book typesets its math without a network.
# It is not kept in git; a copy of the pinned version that is already there is reused.
# Usage: scripts/fetch-mathjax.sh [static_dir]   (default _build/static; the copy goes to
# static_dir/mathjax, which Sphinx publishes as _build/html/_static/mathjax)
set -euo pipefail
version=${MATHJAX_VERSION:-3.2.2}
static_dir=${1:-_build/static}
target=$static_dir/mathjax

if [ -f "$target/tex-mml-chtml.js" ] && [ "$(cat "$target/VERSION" 2>/dev/null)" = "$version" ]; then
  echo "MathJax $version: found in $target"
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "MathJax $version is missing from $target and npm is not installed." >&2
  echo "Install npm (Debian: apt-get install npm) and run make book again." >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "MathJax $version: fetching from the npm registry"
# --prefer-offline: a tarball already in npm's cache is used without asking the registry.
(cd "$tmp" && npm pack --silent --prefer-offline "mathjax@$version" >/dev/null)
tar -xzf "$tmp/mathjax-$version.tgz" -C "$tmp"
src=$tmp/package/es5

# tex-mml-chtml.js is one file with the TeX and MathML inputs, the CommonHTML output and the
# menu; it loads the rest on demand: TeX extensions (\color, \boldsymbol, ...), MathML
# extensions and entities, the CommonHTML fonts, and the accessibility tools of the menu.
stage=$tmp/mathjax
mkdir -p "$stage/input/tex" "$stage/output/chtml/fonts"
cp "$src/tex-mml-chtml.js" "$stage/"
cp -R "$src/input/tex/extensions" "$stage/input/tex/"
cp -R "$src/input/mml" "$stage/input/"
cp -R "$src/output/chtml/fonts/woff-v2" "$stage/output/chtml/fonts/"
cp -R "$src/a11y" "$src/sre" "$src/ui" "$stage/"
cp "$tmp/package/LICENSE" "$stage/"
echo "$version" > "$stage/VERSION"

rm -rf "$target"
mkdir -p "$static_dir"
mv "$stage" "$target"
echo "MathJax $version: copied to $target ($(du -sh "$target" | cut -f1))"
