#!/usr/bin/env bash
# The wheels benchmarks/h200.sh installs on the GPU machine, whose image lacks them, fetched into
# .whl/ (kept out of git by .git/info/exclude). A device call carries at most 64 MiB, so
# nvImageCodec's wheel (24 MiB, every codec and Python version) is cut to what the decoders part
# uses: its Python 3.12 binding, core library and the nvJPEG and libjpeg-turbo extensions (5 MiB).
# Everything else is as published. typer is left out: the machine's own is used (a carried
# typer 0.29 would need pydantic).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
download() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 "$@"
}
download -d .whl av==19.0.2 decord==0.6.0 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 \
    nvidia-nvjpeg==13.3.2.43
full=$(mktemp -d)
trap 'rm -rf "$full"' EXIT
download -d "$full" nvidia-nvimgcodec-cu13==0.9.0.20
python3 - "$full"/nvidia_nvimgcodec_cu13-*.whl .whl <<'EOF'
import base64, hashlib, re, sys, zipfile
from pathlib import Path

source, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
kept = re.compile(r"\.dist-info/(?!RECORD)|^nvidia/__init__\.py$|^nvidia/nvimgcodec/(__init__\.py|libnvimgcodec\.so"
                  r"|nvimgcodec_impl\.cpython-312-|extensions/lib(nvjpeg|jpeg_turbo)_ext)")
with zipfile.ZipFile(source) as whl:
    members = {n: whl.read(n) for n in whl.namelist() if kept.search(n)}
record_name = next(n for n in members if n.endswith(".dist-info/METADATA")).replace("METADATA", "RECORD")
rows = [f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
        for n, d in members.items()]
members[record_name] = ("\n".join([*rows, f"{record_name},,"]) + "\n").encode()
with zipfile.ZipFile(out_dir / source.name, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as whl:
    for name, data in members.items():
        whl.writestr(name, data)
print(f"{out_dir / source.name}: {len(members)} files")
EOF
du -ch .whl/*.whl | tail -1
