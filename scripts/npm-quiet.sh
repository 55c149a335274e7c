#!/usr/bin/env bash
# npm, without the one warning npm >= 11 prints on every call when ~/.npmrc
# sets `nodedir` (a node-gyp setting npm no longer knows: `npm warn Unknown
# user config "nodedir"`). scripts/native-*.sh pass --nodedir to node-gyp
# themselves, so the line says nothing here. Everything else npm writes, and
# its exit status, pass through unchanged; `make` and scripts/test-all.sh call npm through this.
exec 3>&1
npm "$@" 2>&1 1>&3 3>&- | grep -v --line-buffered '^npm warn Unknown user config "nodedir"' >&2
exit "${PIPESTATUS[0]}"
