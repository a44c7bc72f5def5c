"""deploy: a model onto devices, and the proof that the device install works on arm64.

- `ansible/`: the fleet deploy, an Ansible role (`edge_model`) and its playbooks: `make deploy-fleet`
  (every device of an inventory, in batches, rolled back on failure), `make rollback-fleet`, and
  `make deploy DEVICE=user@host` (the same playbook for one device); a callback writes the summary;
- `edge-classify-camera.service`, `edge-classify-live.service`: the systemd units that run the camera
  (and the live view) on a device;
- `arm64/`: `make arm64-check`, the device install and edge-classify in emulated arm64 Raspberry Pi
  OS userlands, compared with this machine's answers, and the deploy playbook over SSH (its package
  docstring lists its modules);
- `README.md`: the device side, step by step.

Nothing here is installed by the wheel: these run from a checkout, on the machine that deploys.
"""
