#!/usr/bin/env bash
# Re-download the vendored GraphiQL playground assets from the npm registry
# at pinned versions. Run from anywhere; files land next to this script.
# After bumping a version, update LICENSES.md and re-check index.html.
set -euo pipefail

REACT_VERSION="18.3.1"
REACT_DOM_VERSION="18.3.1"
GRAPHIQL_VERSION="3.9.0"

DEST="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

fetch() { # <package@version> -> extracted into $TMP/<name>/package
  local spec="$1" name="${1%@*}"
  mkdir -p "$TMP/$name"
  (cd "$TMP/$name" && npm pack --silent "$spec" >/dev/null && tar xzf ./*.tgz)
}

fetch "react@${REACT_VERSION}"
fetch "react-dom@${REACT_DOM_VERSION}"
fetch "graphiql@${GRAPHIQL_VERSION}"

cp "$TMP/react/package/umd/react.production.min.js"         "$DEST/react.production.min.js"
cp "$TMP/react-dom/package/umd/react-dom.production.min.js" "$DEST/react-dom.production.min.js"
# graphiql 3.x ships its minified UMD bundle (graphql + graphql-ws bundled in,
# React/ReactDOM taken from globals) as dist/index.umd.js and its CSS (fonts
# inlined as data: URLs) as dist/style.css; vendored under stable names.
# The trailing sourceMappingURL comment is stripped (map not vendored).
sed '/^\/\/# sourceMappingURL=/d' "$TMP/graphiql/package/dist/index.umd.js" > "$DEST/graphiql.min.js"
sed 's#/\*\# sourceMappingURL=[^*]*\*/##' "$TMP/graphiql/package/dist/style.css" > "$DEST/graphiql.min.css"

ls -l "$DEST"
