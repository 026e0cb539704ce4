#!/usr/bin/env bash
# Regenerate docs/screenshots/ (README, "What it looks like"): the demo report and the
# decomposition report through headless Chromium, and every Grafana dashboard drawn from a live
# fleet by deploy/grafana/render_dashboards.py (Grafana itself is not installable here).
# Needs a broker (FAIRFLEET_BOOTSTRAP, e.g. from `fairfleet broker start`), Debian's chromium and
# prometheus. Not part of `make test`. Each PNG loses its blank bottom and is reduced to a
# 128-colour palette (each < 300 KB).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${FAIRFLEET_BOOTSTRAP:?set FAIRFLEET_BOOTSTRAP to a running broker (fairfleet broker start)}"
command -v chromium >/dev/null || { echo "needs Debian's chromium (apt-get install chromium)" >&2; exit 1; }
OUT=docs/screenshots
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

shot() {  # shot <html file> <png> <width,height>
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
    --window-size="$3" --screenshot="$2" "file://$(realpath "$1")" 2>/dev/null
}

.venv/bin/fairfleet demo --bootstrap "$FAIRFLEET_BOOTSTRAP" --report "$WORK/demo" >/dev/null
shot "$WORK/demo/index.html" "$OUT/demo-report.png" 1200,2600
shot docs/decomposition/index.html "$OUT/decomposition-report.png" 1200,2400
.venv/bin/python deploy/grafana/render_dashboards.py --live --rounds 30 --out "$OUT"

.venv/bin/python - "$OUT"/*.png <<'EOF'
import sys
from PIL import Image, ImageOps

for path in sys.argv[1:]:
    image = Image.open(path).convert("RGB")
    # the window is taller than most pages: cut the blank bottom (20 px margin kept)
    box = ImageOps.invert(image).getbbox() or (0, 0, *image.size)
    image = image.crop((0, 0, image.width, min(image.height, box[3] + 20)))
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
EOF
ls -l "$OUT"
