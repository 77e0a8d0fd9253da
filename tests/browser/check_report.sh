#!/usr/bin/env bash
# A run's report.html in a real browser (headless Chromium): the page loads with nothing failing
# (no resource missing, no script error; it names no outside resource at all, which
# tests/cli.rs checks in the file), its script runs (the sortable tables set
# body[data-ready]), every plot is there as inline SVG, and a screenshot is written.
#   tests/browser/check_report.sh RUN_DIR [SCREENSHOT.png]
set -euo pipefail
dir="$(cd "$1" && pwd)"
shot="${2:-$dir/report.png}"
page="file://$dir/report.html"
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome)"
log="$(mktemp)"
# As root, and on a machine without network, Chromium needs these to start quietly.
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
       --disable-background-networking --disable-component-update --disable-sync
       --user-data-dir="$(mktemp -d)")

dom="$("$browser" "${flags[@]}" --enable-logging=stderr --v=0 --virtual-time-budget=5000 \
        --dump-dom "$page" 2>"$log")"
if ! grep -q 'data-ready="yes"' <<<"$dom"; then
  echo "report.html: the page's script did not run to the end" >&2; cat "$log" >&2; exit 1
fi
if grep -E "Uncaught|Failed to load|ERR_FILE_NOT_FOUND|ERR_NAME|ERR_CONNECTION|net::ERR" "$log" >&2; then
  echo "report.html: something failed to load (above)" >&2; exit 1
fi
figures="$(grep -o '<figure' <<<"$dom" | wc -l)"
svgs="$(grep -o '<svg' <<<"$dom" | wc -l)"
links="$(grep -c '](plots/' "$dir/report.md" || true)"
if [ "$figures" -ne "$links" ] || [ "$svgs" -lt "$figures" ]; then
  echo "report.html: $figures figures and $svgs SVGs for $links plots in report.md" >&2; exit 1
fi

"$browser" "${flags[@]}" --hide-scrollbars --window-size=1280,2400 --screenshot="$shot" "$page" 2>/dev/null
size="$(stat -c %s "$shot")"
if [ "$size" -lt 20000 ]; then
  echo "$shot: only $size bytes: the page did not render" >&2; exit 1
fi
echo "report.html: loaded in $(basename "$browser") with nothing failing, script ran, $figures plots inline; screenshot $shot ($size bytes)"
