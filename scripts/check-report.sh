#!/usr/bin/env bash
# Renders a run's report.html in headless Chromium (Debian package `chromium`) and checks that the
# page has its three plots and tables and that the screenshot is not blank.
# Usage: scripts/check-report.sh RUN_DIR   (writes RUN_DIR/report.png)
set -euo pipefail
run="${1:?usage: scripts/check-report.sh RUN_DIR}"
page="$(cd "$run" && pwd)/report.html"
[[ -f "$page" ]] || { echo "error: $page missing; run distill report $run first" >&2; exit 1; }
command -v chromium >/dev/null || { echo "error: chromium missing (apt-get install chromium)" >&2; exit 1; }
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --user-data-dir="$profile")
dom="$(chromium "${flags[@]}" --dump-dom "file://$page" 2>/dev/null)"
svgs=$(grep -o '<svg' <<<"$dom" | wc -l)
lines=$(grep -oE '<(polyline|path)' <<<"$dom" | wc -l)
tables=$(grep -o '<table' <<<"$dom" | wc -l)
chromium "${flags[@]}" --window-size=1100,2400 --screenshot="$run/report.png" "file://$page" >/dev/null 2>&1
bytes=$(stat -c %s "$run/report.png")
echo "rendered $page: $svgs plots, $lines drawn lines/paths, $tables tables, screenshot $bytes bytes ($run/report.png)"
[[ $svgs -ge 3 && $lines -ge 3 && $bytes -gt 20000 ]] || { echo "error: the page did not render as expected" >&2; exit 1; }
