"""deploy.arm64: `make arm64-check`, the device install and edge-classify in emulated arm64 userlands.

It builds (or reuses, from the cache) arm64 Debian Bookworm and Trixie root filesystems with
debootstrap, follows deploy/README.md's install inside each (a virtual environment, the wheel from
`make wheel` with `[edge]`; on Bookworm also `[tflite]`), copies the models from OUT and runs
`edge-classify` there under qemu-user with QEMU_CPU=cortex-a72 (Pi 4) and cortex-a76 (Pi 5): on
CIFAR test images and on every image format the tests cover, plus `--info`, `--verify` and
`--benchmark --runs 20`. The same commands run on this x86 machine, and parity.py compares the
answers: float32 the same top-1 within 1e-5; int8 the same top-1 within one quantization step, and
bit-identical raw outputs under LiteRT's portable reference kernels (parity.py says why).

The modules, from the command down:
- cli: the options, the exit codes and the check in the order it runs (deploy/arm64_check.py calls
  its `main`);
- host: whether this x86 host can emulate (root, tools, binfmt, mirrors), and facts about it;
- rootfs: the root filesystems, built with debootstrap and kept in the cache;
- inputs: the models from OUT and the test images both machines classify;
- install: deploy/README.md's install paths, the wheel, openssh-server for the SSH run;
- reference: edge-classify's answers on x86;
- runs: one distro's runs, through chroot and over SSH, each compared with x86;
- answers: the edge-classify commands run for a model on either machine, and what they printed;
- chroot: commands in the chroot (with arm64_chroot.sh), the Pi's /proc/cpuinfo, the device's folders;
- ssh: the root filesystem's own sshd on a loopback port, and commands and deploys over SSH;
- parity: the comparison rules, the `runs` records of arm64-check.json and the summary's lines;
- report: arm64-check.json and the summary printed at the end;
- errors: what stops the check or a run, and its progress lines.
"""
