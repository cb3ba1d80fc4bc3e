#!/usr/bin/env bash
# Serve a released single-task bundle with MONAI Label's REST server and synthesise one study through it.
#
#   bash benchmarks/monai_label_rest.sh <released bundle> <datalist.json> [port]
#   e.g. bash benchmarks/monai_label_rest.sh dist/scgan_pet data/benchmark/datalist.json
#
# Needs a MONAI Label environment in $ML_VENV (default .venv-monailabel), made once with:
#   python3 -m venv .venv-monailabel
#   .venv-monailabel/bin/pip install torch==2.14.1 torchvision==0.29.1   # a matching pair (PyPI's torchvision does
#                                                                         # not load beside the local torch 2.13.0)
#   printf 'torch==2.14.1\ntorchvision==0.29.1\n' > /tmp/ml.txt
#   .venv-monailabel/bin/pip install monailabel==0.8.5 'pydicom<3' 'dicomweb-client[gcp]<0.60' 'pynetdicom<3' -c /tmp/ml.txt
# (pydicom 3 breaks pydicom-seg 0.4.1, which MONAI Label imports.)
#
# Steps: copy MONAI Label's monaibundle sample app, put the bundle in <app>/model/<name>, write the first test entry of
# the datalist as one 4D study (T1w and FLAIR stacked, the bundle's image-only contract), start the server, POST
# /infer/<name>?image=<id>&output=image, then compare the answer with the bundle's own inference.json run on the same
# study (released settings; T1w and FLAIR given as separate files): prints REST_RESULT and REST_VS_BUNDLE lines; exits 1 when the answer is not HTTP 200, not
# on the study's grid, or differs from the bundle's own synthesis.
set -euo pipefail
BUNDLE=$(realpath "$1"); DATALIST=$(realpath "$2"); PORT=${3:-8765}
ML=$(realpath "${ML_VENV:-.venv-monailabel}")/bin
NAME=$(basename "$BUNDLE")
WORK=$(mktemp -d); APP=$WORK/app; STUDIES=$WORK/studies; OWN=$WORK/own
cp -r "$("$ML/python" -c 'import monailabel, os; print(os.path.dirname(monailabel.__file__))')/sample-apps/monaibundle" "$APP" 2>/dev/null \
  || cp -r "$ML/../monailabel/sample-apps/monaibundle" "$APP"
mkdir -p "$APP/model" "$STUDIES"
cp -r "$BUNDLE" "$APP/model/$NAME"
SUBJECT=$("$ML/python" - "$DATALIST" "$STUDIES" <<'PY'
import json, sys
from pathlib import Path
import nibabel as nib, numpy as np
datalist, studies = Path(sys.argv[1]), Path(sys.argv[2])
entry = json.loads(datalist.read_text())["test"][0]
t1, flair = (nib.load(str(datalist.parent / entry[key])) for key in ("t1w", "flair"))
name = Path(entry["t1w"]).name.split("_")[0]
stack = np.stack([t1.get_fdata(), flair.get_fdata()], -1).astype(np.float32)
nib.save(nib.Nifti1Image(stack, t1.affine), str(studies / f"{name}.nii.gz"))
# the same study for the bundle's own inference: the per-modality files, no mask (a REST request has none)
own = {"test": [{key: str((datalist.parent / entry[key]).absolute()) for key in ("t1w", "flair")}]}
(studies.parent / "study.json").write_text(json.dumps(own))
print(name)
PY
)
cd "$WORK"
PATH=$ML:$PATH setsid "$ML/monailabel" start_server --app "$APP" --studies "$STUDIES" --conf models "$NAME" \
  --conf zoo_source github --conf sam2 false --port "$PORT" > "$WORK/server.log" 2>&1 &
SERVER=$!
trap 'kill -- -$SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$PORT/info/" > "$WORK/info.json" && break; sleep 2; done
START=$(date +%s.%N)
STATUS=$(curl -s -X POST "http://127.0.0.1:$PORT/infer/$NAME?image=$SUBJECT&output=image" -o "$WORK/pred.nii.gz" -w "%{http_code}")
SECONDS_REST=$(echo "$(date +%s.%N) - $START" | bc)
kill -- -$SERVER 2>/dev/null || true
(cd "$BUNDLE" && "$ML/python" -m monai.bundle run --config_file configs/inference.json --bundle_root "$BUNDLE" \
  --datalist "$WORK/study.json" --output_dir "$OWN" > "$WORK/own.log" 2>&1)
"$ML/python" - "$WORK" "$STUDIES/$SUBJECT.nii.gz" "$STATUS" "$SECONDS_REST" "$NAME" <<'PY'
import sys
from pathlib import Path
import nibabel as nib, numpy as np
work, study, status, seconds, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
if status != "200":
    print(f"REST_RESULT {name} http {status}; server log: {work / 'server.log'}")
    sys.exit(1)
rest, source = nib.load(str(work / "pred.nii.gz")), nib.load(study)
own = nib.load(str(next((work / "own").glob("*.nii*"))))
a, b = rest.get_fdata().squeeze(), own.get_fdata().squeeze()
on_grid = a.shape == source.shape[:3] and np.allclose(rest.affine, source.affine, atol=1e-4)
print(f"REST_RESULT {name}", {"http": 200, "seconds": round(seconds, 2), "shape": a.shape, "on_study_grid": on_grid,
      "dtype": str(rest.get_data_dtype()), "finite": bool(np.isfinite(a).all()), "min": float(a.min()), "max": float(a.max())})
print(f"REST_VS_BUNDLE {name}", {"max_abs_difference": float(np.abs(a - b).max())})
sys.exit(0 if on_grid and np.isfinite(a).all() and np.abs(a - b).max() < 1e-4 else 1)
PY
