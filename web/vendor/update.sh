#!/usr/bin/env bash
# Re-creates the vendored browser builds in this directory from pinned npm
# tarballs, so the web app needs no network access and no build step at run time.
#
#   bash web/vendor/update.sh
#
# Needs: bash, node (>= 18), npm, tar, and the npm registry (only while this runs).
# Each tarball is fetched with `npm pack` into a temporary directory and checked
# against the sha512 integrity pinned below before anything is extracted; the
# upstream license files are checked against pinned sha256 values, so a version
# bump whose license text changed stops here until LICENSES.md is reviewed.
# Nothing is written to this directory unless every check passes, and only the
# files listed in OUTPUTS are (re)written. Running it twice gives byte-identical
# files.
#
# To bump a package: change its *_VERSION, set *_INTEGRITY to the output of
#   npm view <pkg>@<version> dist.integrity
# run the script, and if it stops on a license hash, review the new license
# text, update LICENSES.md and the *_LICENSE_SHA256 value.
#
# How the page loads them (served under /web/vendor/):
#   import { createClient } from '/web/vendor/graphql-ws.js';
#   const { default: uPlot } = await import('/web/vendor/uPlot.esm.js');  // + <link rel=stylesheet href=/web/vendor/uPlot.min.css>
#   const { default: Hls } = await import('/web/vendor/hls.mjs');
#   new Hls({ workerPath: '/web/vendor/hls.worker.js' });  // ESM build: without workerPath, transmuxing runs on the main thread
#   <script src="/web/vendor/axe.min.js"></script>  // classic script, sets window.axe
set -euo pipefail

# --- pinned packages --------------------------------------------------------
GRAPHQL_WS_VERSION=6.4.2
GRAPHQL_WS_INTEGRITY='sha512-wxhPhhOGJo8PbGDkBYVE76sZLDrS+GkyrR4bZECSLVbo0pZZNKs0HtBh2Ip/uaUuiVUxwO9ssI9R92buQfNSqQ=='
GRAPHQL_WS_LICENSE_SHA256=58737f97fe15c9aa68eb067f97a5488ceffca6835bfce511c6819c5156dca48e # package/LICENSE.md

HLS_VERSION=1.7.4
HLS_INTEGRITY='sha512-3GlxGdPvT2YHvQYOt+yOzT/DEior/qJVNIylHA77kgeoBTdQQqi70GwefNEUmHQeNGyjC8U62+bruqW/Tpm+tg=='
HLS_LICENSE_SHA256=ca8773cf798c7ed997d4dd7c8e23c348699f8d5b7462636694cc14de6cda12db # package/LICENSE

UPLOT_VERSION=1.6.32
UPLOT_INTEGRITY='sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=='
UPLOT_LICENSE_SHA256=8f989229699b4fe2f1a0432d0e9edc338a8a911e250e2d1b01ecd770a5f5b1bd # package/LICENSE

AXE_VERSION=4.14.1
AXE_INTEGRITY='sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ=='
AXE_LICENSE_SHA256=af175b9d96ee93c21a036152e1b905b0b95304d4ae8c2c921c7609100ba8df7e # package/LICENSE
AXE_3RD_PARTY_SHA256=4f8563870d0fca38bbc3e00b6f670cb7fa9f380ba9f26a7f7d1184a6b18b1653 # package/LICENSE-3RD-PARTY.txt

# esbuild only bundles graphql-ws's two-file ESM client into one file. The
# native binary package for this machine is used (esbuild-wasm crashes under
# Node 20); its output does not depend on the platform.
ESBUILD_VERSION=0.28.2
declare -A ESBUILD_INTEGRITY=(
  [linux-x64]='sha512-4xTZr1FUmSoQW4XIWmit3tzQrUTZM+N3P0XV8xROKYF50XfI7xeO90+1bZvNwxIufQ9hDQVRJH5YhgPVF8A/HQ=='
  [linux-arm64]='sha512-pW4AC0P3it8c7do9MVM4p51FzHzdM/TZrerurgRcHJ2WTa1VQ1CIq18xncfpBJw4ojkiZZrKW2yIBWBP92j6Ug=='
  [darwin-arm64]='sha512-n4KqkOQrraxHJcgjM1RvwbigfQKIKJVpM7xp+KsxiyUSrRdIXnt73VhrPAx0fV44hgfmIVKjxMN9J1t5jySVkw=='
  [darwin-x64]='sha512-uq6suIWYP37qzGddBKPw5QEQPi6HiLGsO7UmkpfyaYNQ3D+rN6w6WfwH+nuqcGXWvawGwxOEroO4YGnFh95azw=='
)

# The only files this script writes (all in this directory).
OUTPUTS=(graphql-ws.js hls.mjs hls.worker.js uPlot.esm.js uPlot.min.css axe.min.js)

# --- helpers ------------------------------------------------------------------
export LC_ALL=C
umask 022

die() { echo "update.sh: $*" >&2; exit 1; }

for tool in node npm tar; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is required"
done

VENDOR_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mage-vendor.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/tgz" "$WORK/out"

# digest ALGO ENCODING FILE -> prints the digest
digest() {
  node -e 'const c=require("crypto"),f=require("fs");process.stdout.write(c.createHash(process.argv[1]).update(f.readFileSync(process.argv[3])).digest(process.argv[2]))' "$1" "$2" "$3"
}

# fetch NAME SPEC INTEGRITY -> extracts the verified tarball into $WORK/NAME/package
fetch() {
  local name="$1" spec="$2" want="$3" file got
  file="$(cd "$WORK/tgz" && npm pack "$spec" --silent --ignore-scripts --pack-destination "$WORK/tgz" | tail -n 1)"
  [[ -n "$file" && -f "$WORK/tgz/$file" ]] || die "npm pack $spec produced no tarball"
  got="sha512-$(digest sha512 base64 "$WORK/tgz/$file")"
  [[ "$got" == "$want" ]] || die "integrity mismatch for $spec: expected $want, got $got"
  mkdir -p "$WORK/$name"
  tar -xzf "$WORK/tgz/$file" -C "$WORK/$name"
  echo "verified $spec ($want)"
}

# check_license FILE SHA256
check_license() {
  local got
  [[ -f "$1" ]] || die "missing license file $1"
  got="$(digest sha256 hex "$1")"
  [[ "$got" == "$2" ]] || die "license text changed: ${1#"$WORK"/} (sha256 $got, pinned $2); review it, update LICENSES.md and the pinned hash"
}

# --- fetch and verify -------------------------------------------------------
fetch graphql-ws "graphql-ws@$GRAPHQL_WS_VERSION" "$GRAPHQL_WS_INTEGRITY"
fetch hls "hls.js@$HLS_VERSION" "$HLS_INTEGRITY"
fetch uplot "uplot@$UPLOT_VERSION" "$UPLOT_INTEGRITY"
fetch axe "axe-core@$AXE_VERSION" "$AXE_INTEGRITY"

platform="$(node -p 'process.platform + "-" + process.arch')"
[[ -n "${ESBUILD_INTEGRITY[$platform]:-}" ]] \
  || die "no pinned esbuild binary for $platform; add @esbuild/$platform@$ESBUILD_VERSION's integrity to ESBUILD_INTEGRITY"
fetch esbuild "@esbuild/$platform@$ESBUILD_VERSION" "${ESBUILD_INTEGRITY[$platform]}"

check_license "$WORK/graphql-ws/package/LICENSE.md" "$GRAPHQL_WS_LICENSE_SHA256"
check_license "$WORK/hls/package/LICENSE" "$HLS_LICENSE_SHA256"
check_license "$WORK/uplot/package/LICENSE" "$UPLOT_LICENSE_SHA256"
check_license "$WORK/axe/package/LICENSE" "$AXE_LICENSE_SHA256"
check_license "$WORK/axe/package/LICENSE-3RD-PARTY.txt" "$AXE_3RD_PARTY_SHA256"

# --- build into $WORK/out ---------------------------------------------------
# graphql-ws: dist/client.js (the package's "browser" export) imports a hashed
# sibling chunk, so bundle it into one ES module with the MIT notice on top.
GRAPHQL_WS_BANNER="/*! graphql-ws v$GRAPHQL_WS_VERSION (https://github.com/enisdenjo/graphql-ws)
 * dist/client.js bundled into one ES module by esbuild $ESBUILD_VERSION (web/vendor/update.sh).
 *
$(sed -e 's/^/ * /' -e 's/[[:space:]]*$//' "$WORK/graphql-ws/package/LICENSE.md")
 */"
"$WORK/esbuild/package/bin/esbuild" "$WORK/graphql-ws/package/dist/client.js" \
  --bundle --format=esm --platform=browser --minify \
  --legal-comments=inline --log-level=warning --log-override:package.json=silent \
  "--banner:js=$GRAPHQL_WS_BANNER" \
  --outfile="$WORK/out/graphql-ws.js"
grep -q 'createClient' "$WORK/out/graphql-ws.js" || die "graphql-ws bundle does not export createClient"

# hls.js: the minified ES module build, unmodified. ESM builds do not inline the
# transmuxer worker, so ship the separately published worker beside it.
cp "$WORK/hls/package/dist/hls.min.mjs" "$WORK/out/hls.mjs"
cp "$WORK/hls/package/dist/hls.worker.js" "$WORK/out/hls.worker.js"

# uPlot and axe-core: unmodified upstream files.
cp "$WORK/uplot/package/dist/uPlot.esm.js" "$WORK/out/uPlot.esm.js"
cp "$WORK/uplot/package/dist/uPlot.min.css" "$WORK/out/uPlot.min.css"
cp "$WORK/axe/package/axe.min.js" "$WORK/out/axe.min.js"

# --- install ----------------------------------------------------------------
for f in "${OUTPUTS[@]}"; do
  [[ -s "$WORK/out/$f" ]] || die "build produced no $f"
done
for f in "${OUTPUTS[@]}"; do
  chmod 0644 "$WORK/out/$f"
  cp "$WORK/out/$f" "$VENDOR_DIR/$f.tmp.$$"
  mv -f "$VENDOR_DIR/$f.tmp.$$" "$VENDOR_DIR/$f"
done

echo "wrote to $VENDOR_DIR:"
(cd "$VENDOR_DIR" && for f in "${OUTPUTS[@]}"; do printf '  %-16s %s\n' "$f" "$(digest sha256 hex "$f")"; done)
