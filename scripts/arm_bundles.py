"""Host half of scripts/arm_proof.sh: an ONNX and a TFLite bundle of the digits CNN for raspberry-pi-4,
16 test inputs as .npy, and the x86 agent's labels for them (what the aarch64 agent must give back).

    python scripts/arm_bundles.py OUT_DIR [PROFILE]   # idempotent: skips what exists (default raspberry-pi-4)

scripts/bench_idle.py uses it for each profile it measures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

N_INPUTS = 16


def main(out: Path, profile: str = "raspberry-pi-4") -> int:
    import numpy as np

    from converter.cli import main as convert
    from edge_agent.bundle import generate_keypair
    from edge_agent.cli import main as agent
    from examples import digits_cnn

    out.mkdir(parents=True, exist_ok=True)
    if (out / "labels-x86.json").is_file():
        return 0
    x_train, y_train, x_test, y_test = digits_cnn.load_split()
    model = digits_cnn.train(x_train, y_train, epochs=10)
    onnx = digits_cnn.export_onnx(model, out / "digits.onnx")
    calib = digits_cnn.save_data(out / "calib.npz", x_train[:128])
    evaluation = digits_cnn.save_data(out / "eval.npz", x_test, y_test)
    key, pub = generate_keypair(out / "keys")
    inputs = []
    for i in range(N_INPUTS):
        p = out / "inputs" / f"{i:02d}.npy"
        p.parent.mkdir(exist_ok=True)
        np.save(p, x_test[i: i + 1])
        inputs.append(str(p))
    labels = {}
    for fmt in ("onnx", "tflite"):
        bundle = out / f"digits-{fmt}.edgebundle"
        args = ["--quiet", "convert", str(onnx), "--profile", profile, "--format", fmt, "--calibration",
                str(calib), "--eval", str(evaluation), "--key", str(key), "--out", str(bundle), "--bench-runs", "5",
                "--min-speedup", "0"]  # digits: int8 is no faster than fp32 on the build host
        if convert(args) != 0:
            return 1
        result = out / f"run-{fmt}.json"
        with open(result, "w") as fh:
            sys.stdout = fh
            try:
                code = agent(["run", str(bundle), *inputs, "--trust", str(pub), "--json"])
            finally:
                sys.stdout = sys.__stdout__
        if code != 0:
            return code
        labels[fmt] = [r["label"] for r in json.loads(result.read_text())]
    (out / "labels-x86.json").write_text(json.dumps(labels))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), *sys.argv[2:3]))
