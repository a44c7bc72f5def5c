"""deploy: a model onto devices, and the proof that the device install works on arm64.

- `deploy.sh`: `make deploy DEVICE=user@host`, one model copied over SSH, verified and smoke-tested;
- `edge-classify-camera.service`: the systemd unit that runs the camera on a device;
- `arm64/`: `make arm64-check`, the device install and edge-classify in emulated arm64 Raspberry Pi
  OS userlands, compared with this machine's answers (its package docstring lists its modules);
- `README.md`: the device side, step by step.

Nothing here is installed by the wheel: these run from a checkout, on the machine that deploys.
"""
